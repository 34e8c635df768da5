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

import itertools
import sqlite3
import time
from dataclasses import dataclass, field

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
"""

MESSAGE_COLUMNS = "agent_id, message_id, seq, sender, topic, reply_to, content, received_at"


def create_schema(conn: sqlite3.Connection) -> None:
    conn.executescript(SCHEMA)


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


# ---- cluster mode: the checkpoint another node resumes an agent from (cluster_seam.py) ------

_generations = itertools.count(1)
AGENT_FIELDS = ("agent_id", "profile", "config", "session_id", "status", "created_at",
                "updated_at", "turns", "messages_handled", "restarts", "error")
MESSAGE_FIELDS = ("agent_id", "message_id", "seq", "sender", "topic", "reply_to", "content",
                  "received_at", "state", "attempts", "reply", "request_id", "turn")  # the order of the writer's commits (one writer thread)


def checkpoint(conn: sqlite3.Connection, agent_id: str) -> dict | None:
    """The agent's row and message rows as this transaction leaves them (None: no agent)."""
    conn.row_factory = sqlite3.Row
    try:
        row = conn.execute("SELECT * FROM agents WHERE agent_id = ?", (agent_id,)).fetchone()
        if row is None:
            return None
        messages = [dict(m) for m in conn.execute(
            "SELECT * FROM agent_messages WHERE agent_id = ? ORDER BY seq", (agent_id,))]
    finally:
        conn.row_factory = None
    agent = dict(row)
    agent["config"] = agent["config"].decode() if isinstance(agent["config"], bytes) \
        else agent["config"]
    return {"agent": agent, "messages": messages, "generation": next(_generations)}


def with_checkpoints(conn: sqlite3.Connection, op, agent_ids: tuple, *args):
    """`op`, then the checkpoint of each agent it changed, in the same transaction."""
    result = op(conn, *args)
    return result, [checkpoint(conn, agent_id) for agent_id in agent_ids]


def adopt(conn: sqlite3.Connection, snapshot: dict) -> None:
    """An agent resumed from another node's checkpoint: its rows, replacing any old ones."""
    agent = snapshot["agent"]
    conn.execute("DELETE FROM agent_messages WHERE agent_id = ?", (agent["agent_id"],))
    # Only this schema's columns, named here (a record from the bucket names no SQL).
    conn.execute(f"INSERT OR REPLACE INTO agents ({', '.join(AGENT_FIELDS)}) VALUES "
                 f"({', '.join('?' * len(AGENT_FIELDS))})",
                 tuple(agent.get(name) for name in AGENT_FIELDS))
    for message in snapshot["messages"]:
        conn.execute(f"INSERT INTO agent_messages ({', '.join(MESSAGE_FIELDS)}) VALUES "
                     f"({', '.join('?' * len(MESSAGE_FIELDS))})",
                     tuple(message.get(name) for name in MESSAGE_FIELDS))


def load_in_cluster(conn: sqlite3.Connection) -> Loaded:
    """`load` in cluster mode: the cluster's checkpoints say which agents run here (adopted as
    their leases come free), not the rows this node's last run left, which go."""
    conn.execute("DELETE FROM agent_messages")
    conn.execute("DELETE FROM agent_schedules")
    conn.execute("DELETE FROM agents WHERE status != 'terminated'")
    conn.commit()
    return load(conn)
