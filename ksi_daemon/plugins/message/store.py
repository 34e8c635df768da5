"""The message database: retained messages, agents' subscriptions and agents' read cursors.

Functions taking `conn` as their first argument are writer ops (run by SqliteWriter's thread,
inside its transaction); `load` runs once at start-up, before the writer thread exists.
"""
from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field

import orjson

SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    seq INTEGER PRIMARY KEY,
    message_id TEXT NOT NULL,
    topic TEXT NOT NULL,
    sender TEXT,
    content BLOB NOT NULL,
    timestamp REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_by_topic ON messages (topic, seq);
CREATE TABLE IF NOT EXISTS agent_patterns (
    agent_id TEXT NOT NULL,
    pattern TEXT NOT NULL,
    PRIMARY KEY (agent_id, pattern)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS agent_cursors (
    agent_id TEXT PRIMARY KEY,
    last_seq INTEGER NOT NULL
) WITHOUT ROWID;
"""


def create_schema(conn: sqlite3.Connection) -> None:
    conn.executescript(SCHEMA)


@dataclass
class Loaded:
    messages: list[tuple[int, dict]] = field(default_factory=list)
    patterns: dict[str, list[str]] = field(default_factory=dict)
    cursors: dict[str, int] = field(default_factory=dict)
    last_seq: int = 0


def load(conn: sqlite3.Connection, min_timestamp: float | None) -> Loaded:
    loaded = Loaded()
    rows = conn.execute("SELECT seq, message_id, topic, sender, content, timestamp FROM messages "
                        "WHERE timestamp >= ? ORDER BY seq",
                        (min_timestamp if min_timestamp is not None else float("-inf"),))
    for seq, message_id, topic, sender, content, timestamp in rows:
        loaded.messages.append((seq, {"message_id": message_id, "topic": topic, "sender": sender,
                                      "content": orjson.loads(content),
                                      "timestamp": timestamp}))
    for agent_id, pattern in conn.execute("SELECT agent_id, pattern FROM agent_patterns"):
        loaded.patterns.setdefault(agent_id, []).append(pattern)
    loaded.cursors = dict(conn.execute("SELECT agent_id, last_seq FROM agent_cursors"))
    # Sequence numbers never go back, even when every retained message was pruned: an agent's
    # cursor must keep meaning "everything up to here".
    highest = conn.execute("SELECT max(seq) FROM messages").fetchone()[0] or 0
    loaded.last_seq = max([highest, *loaded.cursors.values()])
    return loaded


def insert_messages(conn: sqlite3.Connection, rows: list[tuple[int, dict]],
                    oldest_kept: dict[str, int]) -> None:
    """Store a batch of messages, then drop what retention no longer keeps on their topics."""
    conn.executemany(
        "INSERT INTO messages (seq, message_id, topic, sender, content, timestamp) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        [(seq, m["message_id"], m["topic"], m["sender"], orjson.dumps(m["content"]),
          m["timestamp"]) for seq, m in rows])
    conn.executemany("DELETE FROM messages WHERE topic = ? AND seq < ?",
                     list(oldest_kept.items()))


def prune(conn: sqlite3.Connection, oldest_kept: dict[str, int], cutoff: float | None) -> int:
    """Make the table hold what memory holds (after a retention change or an age sweep)."""
    deleted = 0
    if cutoff is not None:
        deleted += conn.execute("DELETE FROM messages WHERE timestamp < ?", (cutoff,)).rowcount
    topics = [row[0] for row in conn.execute("SELECT DISTINCT topic FROM messages")]
    for topic in topics:
        if topic in oldest_kept:
            deleted += conn.execute("DELETE FROM messages WHERE topic = ? AND seq < ?",
                                    (topic, oldest_kept[topic])).rowcount
        else:
            deleted += conn.execute("DELETE FROM messages WHERE topic = ?", (topic,)).rowcount
    return deleted


def save_agent_patterns(conn: sqlite3.Connection, agent_id: str, patterns: list[str],
                        last_seq: int) -> None:
    conn.executemany("INSERT OR IGNORE INTO agent_patterns (agent_id, pattern) VALUES (?, ?)",
                     [(agent_id, pattern) for pattern in patterns])
    conn.execute("INSERT INTO agent_cursors (agent_id, last_seq) VALUES (?, ?) "
                 "ON CONFLICT (agent_id) DO UPDATE SET last_seq = max(last_seq, excluded.last_seq)",
                 (agent_id, last_seq))


def remove_agent_patterns(conn: sqlite3.Connection, agent_id: str, patterns: list[str] | None,
                          ) -> None:
    if patterns is None:
        conn.execute("DELETE FROM agent_patterns WHERE agent_id = ?", (agent_id,))
    else:
        conn.executemany("DELETE FROM agent_patterns WHERE agent_id = ? AND pattern = ?",
                         [(agent_id, pattern) for pattern in patterns])
    left = conn.execute("SELECT 1 FROM agent_patterns WHERE agent_id = ? LIMIT 1",
                        (agent_id,)).fetchone()
    if left is None:
        conn.execute("DELETE FROM agent_cursors WHERE agent_id = ?", (agent_id,))


def save_cursors(conn: sqlite3.Connection, cursors: dict[str, int]) -> None:
    conn.executemany("UPDATE agent_cursors SET last_seq = max(last_seq, ?) WHERE agent_id = ?",
                     [(seq, agent_id) for agent_id, seq in cursors.items()])
