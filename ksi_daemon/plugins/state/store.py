"""The state table: its schema, the writes (run only by the writer thread) and the reads.

Values are stored as JSON text, so every JSON type comes back as it went in. `version` counts the
writes of a key since it was created (1 on creation); deleting a key ends its history. A key whose
`expires_at` has passed is treated as absent by every read and write, and purged later.
"""
from __future__ import annotations

import sqlite3
import time

import orjson

from ...protocol import CONFLICT, KSIError

SCHEMA = """
CREATE TABLE IF NOT EXISTS state (
    namespace  TEXT NOT NULL,
    key        TEXT NOT NULL,
    value      TEXT NOT NULL,
    version    INTEGER NOT NULL,
    updated_at REAL NOT NULL,
    expires_at REAL,
    PRIMARY KEY (namespace, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS state_by_expiry ON state (expires_at) WHERE expires_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS state_audit (
    id             INTEGER PRIMARY KEY,
    at             REAL NOT NULL,
    namespace      TEXT NOT NULL,
    key            TEXT,
    op             TEXT NOT NULL,
    version        INTEGER,
    peer_pid       INTEGER,
    peer_uid       INTEGER,
    correlation_id TEXT
);
CREATE TRIGGER IF NOT EXISTS state_audit_is_append_only_update BEFORE UPDATE ON state_audit
    BEGIN SELECT RAISE(ABORT, 'state_audit is append-only'); END;
CREATE TRIGGER IF NOT EXISTS state_audit_is_append_only_delete BEFORE DELETE ON state_audit
    BEGIN SELECT RAISE(ABORT, 'state_audit is append-only'); END;
"""

_UPSERT = ("INSERT INTO state (namespace, key, value, version, updated_at, expires_at) "
           "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (namespace, key) DO UPDATE SET "
           "value = excluded.value, version = excluded.version, "
           "updated_at = excluded.updated_at, expires_at = excluded.expires_at")
# Plain sets (no if_version, no audit) of distinct keys go in one statement: one `execute` (one
# parse, one GIL release and re-acquire) per group commit instead of one per write. A live row's
# version goes up by one; an expired row counts as absent, so it starts again at 1 (the row's new
# `updated_at` is the write's time, the moment expiry is judged by).
_UPSERT_ROWS = (
    "INSERT INTO state (namespace, key, value, version, updated_at, expires_at) VALUES {rows} "
    "ON CONFLICT (namespace, key) DO UPDATE SET "
    "value = excluded.value, updated_at = excluded.updated_at, "
    "version = CASE WHEN state.expires_at IS NOT NULL AND state.expires_at <= excluded.updated_at "
    "THEN 1 ELSE state.version + 1 END, expires_at = excluded.expires_at "
    "RETURNING namespace, key, version")
_ROW = "(?, ?, ?, 1, ?, ?)"
# At most this many rows per statement: a handful of statement texts, all in sqlite3's cache.
ROWS_PER_STATEMENT = 32
_UPSERTS = [None] + [_UPSERT_ROWS.format(rows=", ".join([_ROW] * n))
                     for n in range(1, ROWS_PER_STATEMENT + 1)]
_CURRENT = "SELECT version, expires_at FROM state WHERE namespace = ? AND key = ?"
_AUDIT = ("INSERT INTO state_audit (at, namespace, key, op, version, peer_pid, peer_uid, "
          "correlation_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?)")
# Above every key that starts with the prefix, in SQLite's binary (UTF-8 byte) order.
_PREFIX_END = "\U0010ffff"


def create_schema(conn: sqlite3.Connection) -> None:
    conn.executescript(SCHEMA)


def encode_value(value) -> str:
    return orjson.dumps(value).decode()


# ---- writes: called by the writer thread only, inside its transaction ----------------------------
# `audit` is None when auditing is off, else (peer_pid, peer_uid, correlation_id).

def set_value(conn, namespace: str, key: str, value_json: str, expires_at: float | None,
              if_version: int | None, audit) -> dict:
    """The `state:set` reply: {namespace, key, version (the new one)}."""
    if if_version is None and audit is None:
        return set_plain(conn, namespace, key, value_json, expires_at)
    now = time.time()
    row = conn.execute(_CURRENT, (namespace, key)).fetchone()
    current = row[0] if row is not None and _alive(row[1], now) else 0
    if if_version is not None and if_version != current:
        raise KSIError(CONFLICT, f"{namespace}:{key} is at version {current}, not {if_version}",
                       {"namespace": namespace, "key": key, "current_version": current,
                        "if_version": if_version})
    version = current + 1
    conn.execute(_UPSERT, (namespace, key, value_json, version, now, expires_at))
    _record(conn, audit, now, namespace, key, "set", version)
    return {"namespace": namespace, "key": key, "version": version}


def set_plain(conn, namespace: str, key: str, value_json: str, expires_at: float | None) -> dict:
    """A `state:set` without `if_version` or audit; the writer runs neighbours via `many`."""
    return set_plain_many(conn, [(namespace, key, value_json, expires_at)])[0]


def set_plain_many(conn, writes: list[tuple]) -> list[dict]:
    """Many plain sets, in order, with one upsert per run of distinct keys.

    A key written again starts the next statement: RETURNING promises no order, so the versions
    of two writes of one key in one statement could not be told apart.
    """
    now = time.time()
    replies, start = [], 0
    while start < len(writes):
        keys, params, end = set(), [], start
        while end < len(writes) and end - start < ROWS_PER_STATEMENT:
            namespace, key, value_json, expires_at = writes[end]
            if (namespace, key) in keys:
                break
            keys.add((namespace, key))
            params += (namespace, key, value_json, now, expires_at)
            end += 1
        # RETURNING gives rows in no promised order: match them by key.
        versions = {(namespace, key): version for namespace, key, version
                    in conn.execute(_UPSERTS[end - start], params)}
        replies += [{"namespace": namespace, "key": key, "version": versions[namespace, key]}
                    for namespace, key, _value, _expires in writes[start:end]]
        start = end
    return replies


set_plain.many = set_plain_many


def delete_value(conn, namespace: str, key: str, audit) -> int | None:
    """The version the key had when deleted, or None if it did not exist (or had expired)."""
    now = time.time()
    row = conn.execute("DELETE FROM state WHERE namespace = ? AND key = ? "
                       "RETURNING version, expires_at", (namespace, key)).fetchone()
    if row is None or not _alive(row[1], now):
        return None
    _record(conn, audit, now, namespace, key, "delete", row[0])
    return row[0]


def clear_namespace(conn, namespace: str, audit) -> int:
    now = time.time()
    rows = conn.execute("DELETE FROM state WHERE namespace = ? RETURNING expires_at",
                        (namespace,)).fetchall()
    deleted = sum(1 for (expires_at,) in rows if _alive(expires_at, now))
    _record(conn, audit, now, namespace, None, "clear", None)
    return deleted


def purge_expired(conn, audit) -> list[tuple[str, str, int]]:
    now = time.time()
    rows = conn.execute("DELETE FROM state WHERE expires_at IS NOT NULL AND expires_at <= ? "
                        "RETURNING namespace, key, version", (now,)).fetchall()
    for namespace, key, version in rows:
        _record(conn, audit, now, namespace, key, "expire", version)
    return rows


def _record(conn, audit, now, namespace, key, op, version) -> None:
    if audit is not None:
        conn.execute(_AUDIT, (now, namespace, key, op, version, *audit))


def _alive(expires_at: float | None, now: float) -> bool:
    return expires_at is None or expires_at > now


# ---- reads: the reader connection, on the event loop ---------------------------------------------

class StateReader:
    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn
        self._loads = orjson.loads

    def get(self, namespace: str, key: str) -> tuple | None:
        """(value as JSON text, version, expires_at) of a live key, or None."""
        row = self.conn.execute(
            "SELECT value, version, expires_at FROM state WHERE namespace = ? AND key = ? "
            "AND (expires_at IS NULL OR expires_at > ?)", (namespace, key, time.time())
        ).fetchone()
        return row

    def keys(self, namespace: str, prefix: str, limit: int) -> list[str]:
        rows = self.conn.execute(
            "SELECT key FROM state WHERE namespace = ? AND key >= ? AND key < ? "
            "AND (expires_at IS NULL OR expires_at > ?) ORDER BY key LIMIT ?",
            (namespace, prefix, prefix + _PREFIX_END, time.time(), limit)).fetchall()
        return [key for (key,) in rows if key.startswith(prefix)]

    def audit(self, namespace: str | None, key: str | None, limit: int) -> list[dict]:
        rows = self.conn.execute(
            "SELECT id, at, namespace, key, op, version, peer_pid, peer_uid, correlation_id "
            "FROM state_audit WHERE (?1 IS NULL OR namespace = ?1) AND (?2 IS NULL OR key = ?2) "
            "ORDER BY id DESC LIMIT ?3", (namespace, key, limit)).fetchall()
        names = ("id", "at", "namespace", "key", "op", "version", "peer_pid", "peer_uid",
                 "correlation_id")
        return [dict(zip(names, row)) for row in reversed(rows)]
