"""Conversation turns on SQLite: the schema, the append (writer thread only) and the reads.

`messages` holds every turn; `sessions` keeps one summary row per session so listing is cheap;
`messages_fts` is an FTS5 index over the content, kept in step by a trigger in the same
transaction as the append.
"""
from __future__ import annotations

import sqlite3
import time

import orjson

SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id         INTEGER PRIMARY KEY,
    session_id TEXT NOT NULL,
    role       TEXT NOT NULL,
    content    TEXT NOT NULL,
    model      TEXT,
    usage      TEXT,
    request_id TEXT,
    metadata   TEXT,
    timestamp  REAL NOT NULL,
    tool_calls TEXT,
    tool_call_id TEXT
);
CREATE INDEX IF NOT EXISTS messages_by_session ON messages (session_id, id);
CREATE TABLE IF NOT EXISTS sessions (
    session_id    TEXT PRIMARY KEY,
    created_at    REAL NOT NULL,
    updated_at    REAL NOT NULL,
    message_count INTEGER NOT NULL,
    last_model    TEXT
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS sessions_by_update ON sessions (updated_at);
CREATE INDEX IF NOT EXISTS sessions_by_creation ON sessions (created_at);
CREATE VIRTUAL TABLE IF NOT EXISTS messages_fts USING fts5 (
    content, content='messages', content_rowid='id', tokenize='unicode61 remove_diacritics 2'
);
CREATE TRIGGER IF NOT EXISTS messages_indexed AFTER INSERT ON messages BEGIN
    INSERT INTO messages_fts (rowid, content) VALUES (new.id, new.content);
END;
"""

MESSAGE_COLUMNS = ("id", "session_id", "role", "content", "model", "usage", "request_id",
                   "metadata", "timestamp", "tool_calls", "tool_call_id")
# Columns added since the first schema, with their SQL type: a file from before gains them.
ADDED_COLUMNS = (("tool_calls", "TEXT"), ("tool_call_id", "TEXT"))
_SELECT_MESSAGES = f"SELECT {', '.join(MESSAGE_COLUMNS)} FROM messages"
SORTS = {
    "updated_desc": "updated_at DESC, session_id DESC",
    "updated_asc": "updated_at ASC, session_id ASC",
    "created_desc": "created_at DESC, session_id DESC",
    "created_asc": "created_at ASC, session_id ASC",
    "messages_desc": "message_count DESC, session_id ASC",
}


def create_schema(conn: sqlite3.Connection) -> None:
    conn.executescript(SCHEMA)
    have = {row[1] for row in conn.execute("PRAGMA table_info(messages)")}
    for name, sql_type in ADDED_COLUMNS:
        if name not in have:
            conn.execute(f"ALTER TABLE messages ADD COLUMN {name} {sql_type}")


def _json_or_none(value) -> str | None:
    return None if value is None else orjson.dumps(value).decode()


# ---- the write: writer thread only ---------------------------------------------------------------

def append_message(conn, session_id: str, role: str, content: str | None, model: str | None,
                   usage, request_id: str | None, metadata, tool_calls=None,
                   tool_call_id: str | None = None) -> dict:
    """`conversation:append`'s reply, once committed."""
    now = time.time()
    message_id = _insert_message(conn, session_id, now, role, content, model, usage, request_id,
                                 metadata, tool_calls, tool_call_id)
    _count_in_session(conn, session_id, now, 1, model)
    return {"session_id": session_id, "message_id": message_id, "timestamp": now}


def append_turn(conn, session_id: str, messages: list[dict]) -> dict:
    """A turn's messages in one transaction (one commit, one fsync under FULL, and never half
    a turn in the store); `conversation:append_turn`'s reply, once committed."""
    now = time.time()
    ids = [_insert_message(conn, session_id, now, m["role"], m.get("content"), m.get("model"),
                           m.get("usage"), m.get("request_id"), m.get("metadata"),
                           m.get("tool_calls"), m.get("tool_call_id")) for m in messages]
    last_model = next((m["model"] for m in reversed(messages) if m.get("model")), None)
    _count_in_session(conn, session_id, now, len(messages), last_model)
    return {"session_id": session_id, "message_ids": ids, "timestamp": now}


def _insert_message(conn, session_id: str, now: float, role: str, content: str | None,
                    model: str | None, usage, request_id: str | None, metadata, tool_calls,
                    tool_call_id: str | None) -> int:
    # content stays NOT NULL (older readers rely on it): a tool-calling message without text
    # is stored as "" and read back as null (message_of).
    return conn.execute(
        "INSERT INTO messages (session_id, role, content, model, usage, request_id, metadata, "
        "timestamp, tool_calls, tool_call_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
        (session_id, role, content or "", model, _json_or_none(usage), request_id,
         _json_or_none(metadata), now, _json_or_none(tool_calls), tool_call_id)).fetchone()[0]


def _count_in_session(conn, session_id: str, now: float, added: int, model: str | None) -> None:
    conn.execute(
        "INSERT INTO sessions (session_id, created_at, updated_at, message_count, last_model) "
        "VALUES (?, ?, ?, ?, ?) ON CONFLICT (session_id) DO UPDATE SET "
        "updated_at = excluded.updated_at, "
        "message_count = message_count + excluded.message_count, "
        "last_model = coalesce(excluded.last_model, last_model)",
        (session_id, now, now, added, model))


def apply_turn(conn, first_id: int, session_id: str, messages: list[dict], at: float) -> dict:
    """A turn taken from a shared log into this node's copy (docs/CLUSTER.md, "Conversations"):
    its ids and time come with it, so every node's copy holds the same rows. Applying a turn
    twice (the writing node's own, then the log bringing it back) stores it once; turns may
    arrive out of the log's order, so the session keeps its earliest and latest times."""
    ids = [first_id + index for index in range(len(messages))]
    if conn.execute("SELECT 1 FROM messages WHERE id = ?", (first_id,)).fetchone() is None:
        for message_id, m in zip(ids, messages):
            conn.execute(
                "INSERT INTO messages (id, session_id, role, content, model, usage, request_id, "
                "metadata, timestamp, tool_calls, tool_call_id) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (message_id, session_id, m["role"], m.get("content") or "", m.get("model"),
                 _json_or_none(m.get("usage")), m.get("request_id"),
                 _json_or_none(m.get("metadata")), at, _json_or_none(m.get("tool_calls")),
                 m.get("tool_call_id")))
        last_model = next((m["model"] for m in reversed(messages) if m.get("model")), None)
        conn.execute(
            "INSERT INTO sessions (session_id, created_at, updated_at, message_count, last_model) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT (session_id) DO UPDATE SET "
            "created_at = min(created_at, excluded.created_at), "
            "last_model = CASE WHEN excluded.updated_at >= updated_at "
            "THEN coalesce(excluded.last_model, last_model) ELSE last_model END, "
            "updated_at = max(updated_at, excluded.updated_at), "
            "message_count = message_count + excluded.message_count",
            (session_id, at, at, len(messages), last_model))
    return {"session_id": session_id, "message_ids": ids, "timestamp": at}


# ---- reads ----------------------------------------------------------------------------------------

def message_of(row) -> dict:
    message = dict(zip(MESSAGE_COLUMNS, row))
    message["message_id"] = message.pop("id")
    for name in ("usage", "metadata", "tool_calls"):
        if message[name] is not None:
            message[name] = orjson.loads(message[name])
    if message["tool_calls"] is None:
        del message["tool_calls"]
    elif not message["content"]:
        message["content"] = None
    if message["tool_call_id"] is None:
        del message["tool_call_id"]
    return message


class ConversationReader:
    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn

    def session(self, session_id: str) -> dict | None:
        row = self.conn.execute(
            "SELECT session_id, created_at, updated_at, message_count, last_model FROM sessions "
            "WHERE session_id = ?", (session_id,)).fetchone()
        return None if row is None else dict(zip(
            ("session_id", "created_at", "updated_at", "message_count", "last_model"), row))

    def sessions(self, sort: str, limit: int, offset: int) -> tuple[list[dict], int]:
        rows = self.conn.execute(
            "SELECT session_id, created_at, updated_at, message_count, last_model FROM sessions "
            f"ORDER BY {SORTS[sort]} LIMIT ? OFFSET ?", (limit, offset)).fetchall()
        total = self.conn.execute("SELECT count(*) FROM sessions").fetchone()[0]
        names = ("session_id", "created_at", "updated_at", "message_count", "last_model")
        return [dict(zip(names, row)) for row in rows], total

    def messages(self, session_id: str, limit: int, offset: int) -> list[dict]:
        rows = self.conn.execute(
            f"{_SELECT_MESSAGES} WHERE session_id = ? ORDER BY id LIMIT ? OFFSET ?",
            (session_id, limit, offset)).fetchall()
        return [message_of(row) for row in rows]

    def latest_messages(self, session_id: str, limit: int) -> list[dict]:
        rows = self.conn.execute(
            f"{_SELECT_MESSAGES} WHERE session_id = ? ORDER BY id DESC LIMIT ?",
            (session_id, limit)).fetchall()
        return [message_of(row) for row in reversed(rows)]

    def search(self, match: str, session_id: str | None, limit: int) -> list[dict]:
        rows = self.conn.execute(
            "SELECT m.id, m.session_id, m.role, m.model, m.timestamp, "
            "snippet(messages_fts, 0, '[', ']', '…', 16), bm25(messages_fts) "
            "FROM messages_fts JOIN messages m ON m.id = messages_fts.rowid "
            "WHERE messages_fts MATCH ? AND (?2 IS NULL OR m.session_id = ?2) "
            "ORDER BY bm25(messages_fts) LIMIT ?3", (match, session_id, limit)).fetchall()
        names = ("message_id", "session_id", "role", "model", "timestamp", "snippet", "rank")
        return [dict(zip(names, row)) for row in rows]


def fts_query_of(text: str) -> str:
    """Plain words to an FTS5 query: every word must appear (each quoted, so no syntax leaks)."""
    words = text.split()
    return " ".join('"' + word.replace('"', '""') + '"' for word in words)
