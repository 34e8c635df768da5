"""The agent database: every agent's record and the messages in its inbox.

Write-ahead: an agent row is committed before agent:spawn answers, a message before agent:send
answers (or before agent:inbox hands it over, which moves the message plugin's cursor), and a
turn's reply together with the message it becomes in the next agent's inbox, before anyone is
told. So after any stop, the database says exactly which messages still need an answer.

Functions taking `conn` first are writer ops (SqliteWriter's thread, inside its transaction);
`load` runs once at start-up, before the writer thread exists.

Message states: pending (to be answered) -> answered (reply stored, not yet published to its
topic) -> done; or skipped (not answered: max_turns reached, or its completion was cancelled);
or interrupted / rolled_back (its turn was stopped by agent:interrupt or a busy policy).

Schedules (wake-ups) are stored with their next firing; a firing and the message it puts in the
inbox are committed together, so a restart neither loses nor repeats one.
"""
from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass, field

from ...protocol import CONFLICT, KSIError

PENDING, ANSWERED, DONE, SKIPPED = "pending", "answered", "done", "skipped"
INTERRUPTED, ROLLED_BACK = "interrupted", "rolled_back"
HANDLED = (DONE, SKIPPED, INTERRUPTED, ROLLED_BACK)  # kept only for agent:info's recent turns

SCHEMA = """
CREATE TABLE IF NOT EXISTS agents (
    agent_id TEXT PRIMARY KEY,
    profile TEXT NOT NULL,
    config BLOB NOT NULL,
    session_id TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    turns INTEGER NOT NULL DEFAULT 0,
    messages_handled INTEGER NOT NULL DEFAULT 0,
    restarts INTEGER NOT NULL DEFAULT 0,
    error TEXT
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS agent_messages (
    agent_id TEXT NOT NULL,
    message_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    sender TEXT,
    topic TEXT,
    reply_to TEXT NOT NULL,
    content TEXT NOT NULL,
    received_at REAL NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0,
    reply TEXT,
    request_id TEXT,
    turn INTEGER,
    PRIMARY KEY (agent_id, message_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS agent_messages_in_order ON agent_messages (agent_id, seq);
CREATE INDEX IF NOT EXISTS agents_by_status ON agents (status, updated_at);
CREATE TABLE IF NOT EXISTS agent_schedules (
    schedule_id TEXT PRIMARY KEY,
    agent_id TEXT NOT NULL,
    every_s REAL,
    cron TEXT,
    prompt TEXT NOT NULL,
    created_at REAL NOT NULL,
    next_at REAL NOT NULL,
    last_message_id TEXT,
    fired INTEGER NOT NULL DEFAULT 0,
    coalesced INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
-- Each agent's checkpoint revision (store_seam.py): bumped by every change of its rows, kept
-- after the agent is gone so that a revision never repeats for an agent id.
CREATE TABLE IF NOT EXISTS agent_revisions (
    agent_id TEXT PRIMARY KEY,
    revision INTEGER NOT NULL
) WITHOUT ROWID;
"""
_REVISION_TRIGGERS = [
    (f"agent_revision_on_{table}_{op.lower()}", table, op, row)
    for table in ("agents", "agent_messages", "agent_schedules")
    for op, row in (("INSERT", "new"), ("UPDATE", "new"), ("DELETE", "old"))]
_REVISION_TRIGGER = (
    "CREATE TRIGGER IF NOT EXISTS {name} AFTER {op} ON {table} BEGIN "
    "INSERT INTO agent_revisions VALUES ({row}.agent_id, 1) ON CONFLICT (agent_id) "
    "DO UPDATE SET revision = revision + 1; END;")

MESSAGE_COLUMNS = "agent_id, message_id, seq, sender, topic, reply_to, content, received_at"


def create_schema(conn: sqlite3.Connection) -> None:
    conn.executescript(SCHEMA)
    for name, table, op, row in _REVISION_TRIGGERS:
        conn.execute(_REVISION_TRIGGER.format(name=name, table=table, op=op, row=row))


@dataclass
class Loaded:
    agents: list[dict] = field(default_factory=list)        # not terminated, oldest first
    terminated: list[dict] = field(default_factory=list)    # oldest first
    messages: dict[str, list[dict]] = field(default_factory=dict)  # agent -> rows by seq
    schedules: list[dict] = field(default_factory=list)
    last_seq: int = 0


def load(conn: sqlite3.Connection) -> Loaded:
    loaded = Loaded()
    conn.row_factory = sqlite3.Row
    try:
        for row in conn.execute("SELECT * FROM agents ORDER BY created_at, agent_id"):
            (loaded.terminated if row["status"] == "terminated" else loaded.agents).append(
                dict(row))
        for row in conn.execute("SELECT * FROM agent_messages ORDER BY agent_id, seq"):
            loaded.messages.setdefault(row["agent_id"], []).append(dict(row))
        loaded.schedules = [dict(row) for row in conn.execute(
            "SELECT * FROM agent_schedules ORDER BY created_at")]
        loaded.last_seq = conn.execute("SELECT max(seq) FROM agent_messages").fetchone()[0] or 0
    finally:
        conn.row_factory = None
    return loaded


def insert_agent(conn: sqlite3.Connection, row: dict, first_message: tuple | None) -> None:
    """A new agent (replacing a terminated one of the same id), with its task if it has one."""
    conn.execute("DELETE FROM agent_messages WHERE agent_id = ?", (row["agent_id"],))
    conn.execute(
        "INSERT OR REPLACE INTO agents (agent_id, profile, config, session_id, status, "
        "created_at, updated_at) VALUES (:agent_id, :profile, :config, :session_id, :status, "
        ":created_at, :created_at)", row)
    if first_message is not None:
        add_message(conn, first_message)


def delete_agent(conn: sqlite3.Connection, agent_id: str) -> None:
    conn.execute("DELETE FROM agent_messages WHERE agent_id = ?", (agent_id,))
    conn.execute("DELETE FROM agents WHERE agent_id = ?", (agent_id,))


def add_message(conn: sqlite3.Connection, row: tuple) -> bool:
    """Store a message for an agent; False if it is already there (a replayed delivery)."""
    return conn.execute(f"INSERT OR IGNORE INTO agent_messages ({MESSAGE_COLUMNS}) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)", row).rowcount == 1


def save_status(conn: sqlite3.Connection, agent_id: str, status: str, restarts: int,
                error: str | None, attempts: tuple[str, int] | None = None) -> None:
    """An agent's new state; with `attempts`, the failed message's retry count goes with it."""
    conn.execute("UPDATE agents SET status = ?, restarts = ?, error = ?, updated_at = ? "
                 "WHERE agent_id = ?", (status, restarts, error, time.time(), agent_id))
    if attempts is not None:
        conn.execute("UPDATE agent_messages SET attempts = ? WHERE agent_id = ? AND "
                     "message_id = ?", (attempts[1], agent_id, attempts[0]))


def record_turn(conn: sqlite3.Connection, agent_id: str, message_id: str, state: str,
                reply: str | None, request_id: str | None, turn: int | None, turns: int,
                handled: int, forward: tuple | None, keep: int) -> None:
    """One message handled: its reply, the agent's counters, and (atomically) the reply as a
    message in the next agent's inbox. Older handled messages beyond `keep` are forgotten."""
    conn.execute("UPDATE agent_messages SET state = ?, reply = ?, request_id = ?, turn = ? "
                 "WHERE agent_id = ? AND message_id = ?",
                 (state, reply, request_id, turn, agent_id, message_id))
    conn.execute("UPDATE agents SET turns = ?, messages_handled = ?, updated_at = ? "
                 "WHERE agent_id = ?", (turns, handled, time.time(), agent_id))
    if forward is not None:
        add_message(conn, forward)
    handled = ", ".join(f"'{state}'" for state in HANDLED)
    cutoff = conn.execute(
        f"SELECT seq FROM agent_messages WHERE agent_id = ? AND state IN ({handled}) "
        "ORDER BY seq DESC LIMIT 1 OFFSET ?", (agent_id, keep)).fetchone()
    if cutoff is not None:
        conn.execute("DELETE FROM agent_messages WHERE agent_id = ? AND seq <= ? AND "
                     f"state IN ({handled})", (agent_id, cutoff[0]))


def mark_done(conn: sqlite3.Connection, agent_id: str, message_id: str) -> None:
    conn.execute("UPDATE agent_messages SET state = 'done' WHERE agent_id = ? AND "
                 "message_id = ? AND state = 'answered'", (agent_id, message_id))


def terminate(conn: sqlite3.Connection, agent_id: str, keep_terminated: int) -> None:
    """Terminated: its inbox and schedules are dropped, its record kept (the newest
    `keep_terminated` only)."""
    conn.execute("DELETE FROM agent_messages WHERE agent_id = ?", (agent_id,))
    delete_schedules_of(conn, agent_id)
    conn.execute("UPDATE agents SET status = 'terminated', updated_at = ? WHERE agent_id = ?",
                 (time.time(), agent_id))
    conn.execute("DELETE FROM agents WHERE status = 'terminated' AND agent_id NOT IN ("
                 "SELECT agent_id FROM agents WHERE status = 'terminated' "
                 "ORDER BY updated_at DESC LIMIT ?)", (keep_terminated,))


def insert_schedule(conn: sqlite3.Connection, row: dict) -> None:
    conn.execute("INSERT INTO agent_schedules (schedule_id, agent_id, every_s, cron, prompt, "
                 "created_at, next_at) VALUES (:schedule_id, :agent_id, :every_s, :cron, "
                 ":prompt, :created_at, :next_at)", row)


def delete_schedule(conn: sqlite3.Connection, schedule_id: str) -> None:
    conn.execute("DELETE FROM agent_schedules WHERE schedule_id = ?", (schedule_id,))


def delete_schedules_of(conn: sqlite3.Connection, agent_id: str) -> None:
    conn.execute("DELETE FROM agent_schedules WHERE agent_id = ?", (agent_id,))


def fire_schedule(conn: sqlite3.Connection, row: dict, message: tuple | None) -> None:
    """A firing: the schedule's next time and counters, and the message it delivers (none when
    the previous firing still waits in the inbox: coalesced)."""
    conn.execute("UPDATE agent_schedules SET next_at = :next_at, last_message_id = "
                 ":last_message_id, fired = :fired, coalesced = :coalesced "
                 "WHERE schedule_id = :schedule_id", row)
    if message is not None:
        add_message(conn, message)


# ---- checkpoints: an agent's rows as one record (sqlite_checkpoints.py, store_seam.py) ----------

AGENT_COLUMNS = ("agent_id", "profile", "config", "session_id", "status", "created_at",
                 "updated_at", "turns", "messages_handled", "restarts", "error")
MESSAGE_FIELDS = ("message_id", "seq", "sender", "topic", "reply_to", "content", "received_at",
                  "state", "attempts", "reply", "request_id", "turn")
SCHEDULE_FIELDS = ("schedule_id", "every_s", "cron", "prompt", "created_at", "next_at",
                   "last_message_id", "fired", "coalesced")


def revision_of(conn: sqlite3.Connection, agent_id: str) -> int:
    row = conn.execute("SELECT revision FROM agent_revisions WHERE agent_id = ?",
                       (agent_id,)).fetchone()
    return row[0] if row else 0


def read_checkpoint(conn: sqlite3.Connection, agent_id: str) -> tuple[dict, int] | None:
    """(the agent's record, its revision), or None when there is no agent of that id."""
    row = conn.execute(f"SELECT {', '.join(AGENT_COLUMNS)} FROM agents WHERE agent_id = ?",
                       (agent_id,)).fetchone()
    if row is None:
        return None
    agent = dict(zip(AGENT_COLUMNS, row))
    if isinstance(agent["config"], bytes):
        agent["config"] = agent["config"].decode()
    messages = [dict(zip(MESSAGE_FIELDS, m)) for m in conn.execute(
        f"SELECT {', '.join(MESSAGE_FIELDS)} FROM agent_messages WHERE agent_id = ? "
        "ORDER BY seq", (agent_id,))]
    schedules = [dict(zip(SCHEDULE_FIELDS, r)) for r in conn.execute(
        f"SELECT {', '.join(SCHEDULE_FIELDS)} FROM agent_schedules WHERE agent_id = ? "
        "ORDER BY created_at", (agent_id,))]
    return {"agent": agent, "messages": messages, "schedules": schedules}, \
        revision_of(conn, agent_id)


def agent_ids(conn: sqlite3.Connection) -> list[str]:
    return [agent_id for (agent_id,) in conn.execute(
        "SELECT agent_id FROM agents ORDER BY created_at, agent_id")]


def write_checkpoint(conn: sqlite3.Connection, agent_id: str, record: dict,
                     if_revision: int | None) -> int:
    """Replace the agent's rows by `record`'s (read_checkpoint's shape); its new revision.
    With `if_revision`, only if the agent is still at it (0: only if it has no rows)."""
    _check_revision(conn, agent_id, if_revision)
    conn.execute("DELETE FROM agent_messages WHERE agent_id = ?", (agent_id,))
    conn.execute("DELETE FROM agent_schedules WHERE agent_id = ?", (agent_id,))
    agent = {**record["agent"], "agent_id": agent_id}
    conn.execute(f"INSERT OR REPLACE INTO agents ({', '.join(AGENT_COLUMNS)}) VALUES "
                 f"({', '.join(':' + c for c in AGENT_COLUMNS)})", agent)
    for message in record.get("messages", ()):
        conn.execute(f"INSERT INTO agent_messages (agent_id, {', '.join(MESSAGE_FIELDS)}) "
                     f"VALUES (:agent_id, {', '.join(':' + f for f in MESSAGE_FIELDS)})",
                     {**message, "agent_id": agent_id})
    for schedule in record.get("schedules", ()):
        conn.execute(f"INSERT INTO agent_schedules (agent_id, {', '.join(SCHEDULE_FIELDS)}) "
                     f"VALUES (:agent_id, {', '.join(':' + f for f in SCHEDULE_FIELDS)})",
                     {**schedule, "agent_id": agent_id})
    return revision_of(conn, agent_id)


def delete_checkpoint(conn: sqlite3.Connection, agent_id: str, if_revision: int | None) -> bool:
    _check_revision(conn, agent_id, if_revision)
    existed = conn.execute("SELECT 1 FROM agents WHERE agent_id = ?", (agent_id,)).fetchone()
    delete_schedules_of(conn, agent_id)
    delete_agent(conn, agent_id)
    return existed is not None


def _check_revision(conn: sqlite3.Connection, agent_id: str, if_revision: int | None) -> None:
    """Refuse before writing anything (the writer needs no rollback for a refusal)."""
    if if_revision is None:
        return
    exists = conn.execute("SELECT 1 FROM agents WHERE agent_id = ?", (agent_id,)).fetchone()
    current = revision_of(conn, agent_id) if exists else 0
    if current != if_revision:
        raise KSIError(CONFLICT, f"agent {agent_id}'s checkpoint is at revision {current}, not "
                       f"{if_revision}", {"agent_id": agent_id, "current_revision": current,
                                          "if_revision": if_revision})


def load_in_cluster(conn: sqlite3.Connection) -> Loaded:
    """`load` in cluster mode: the cluster's checkpoints say which agents run here (adopted as
    their leases come free, docs/CLUSTER.md), not the rows this node's last run left, which
    go. Terminated agents' rows stay, for agent:list {status: terminated}."""
    conn.execute("DELETE FROM agent_messages")
    conn.execute("DELETE FROM agent_schedules")
    conn.execute("DELETE FROM agents WHERE status != 'terminated'")
    conn.commit()
    return load(conn)
