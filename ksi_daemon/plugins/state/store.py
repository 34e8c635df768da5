"""The state table: its schema, the writes (run only by the writer thread) and the reads.

Values are stored as JSON text, so every JSON type comes back as it went in. `version` counts the
writes of a key since it was created (1 on creation); deleting a key ends its history. A key whose
`expires_at` has passed is treated as absent by every read and write, and purged later.
"""
from __future__ import annotations

import sqlite3
import time
from itertools import chain
from pathlib import Path

import orjson

from ...protocol import CONFLICT, KSIError
from ...storage.errors import is_storage_failure, storage_error
from ...storage.sqlite_writer import Combinable

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
    correlation_id TEXT,
    agent_id       TEXT,
    event          TEXT,
    detail         TEXT
);
CREATE TRIGGER IF NOT EXISTS state_audit_is_append_only_update BEFORE UPDATE ON state_audit
    BEGIN SELECT RAISE(ABORT, 'state_audit is append-only'); END;
-- What the audit keeps (one row, written at start from the settings): rows inside that window
-- cannot be deleted, older ones are pruned by the daemon.
CREATE TABLE IF NOT EXISTS state_audit_retention (keep_s REAL NOT NULL, keep_rows INTEGER NOT NULL);
DROP TRIGGER IF EXISTS state_audit_is_append_only_delete;
CREATE TRIGGER IF NOT EXISTS state_audit_keeps_its_window BEFORE DELETE ON state_audit
    WHEN old.at > (julianday('now') - 2440587.5) * 86400.0
                  - coalesce((SELECT keep_s FROM state_audit_retention), 1e18)
     AND old.id > (SELECT max(id) FROM state_audit)
                  - coalesce((SELECT keep_rows FROM state_audit_retention), 9e18)
    BEGIN SELECT RAISE(ABORT, 'state_audit keeps what is inside its retention window'); END;
"""
# Columns added since the first schema, with their SQL type: a file from before gains them.
ADDED_AUDIT_COLUMNS = (("agent_id", "TEXT"), ("event", "TEXT"), ("detail", "TEXT"))

# Each row carries its new version, worked out by the writer (see KnownVersions): a group's plain
# sets are one statement with nothing to read back. (RETURNING the versions cost a step, so a GIL
# hand-off to the waiting event loop, per row: bench/RESULTS.md, "State".)
_UPSERT_ROWS = (
    "INSERT INTO state (namespace, key, value, version, updated_at, expires_at) VALUES {rows} "
    "ON CONFLICT (namespace, key) DO UPDATE SET value = excluded.value, "
    "version = excluded.version, updated_at = excluded.updated_at, "
    "expires_at = excluded.expires_at")
_ROW = "(?, ?, ?, ?, ?, ?)"
# A row without expiry writes NULL in the statement's text instead of binding None: sqlite3 binds
# None through its adaptation protocol, a lookup and a Python call per row (bench/RESULTS.md,
# "State", session 8). A statement holds rows of one kind; a group of plain sets without
# expiry, the hot case, is all of that kind.
_ROW_NO_EXPIRY = "(?, ?, ?, ?, ?, NULL)"
# At most this many rows per statement: a few dozen statement texts, all in sqlite3's cache
# (128 statements per connection).
ROWS_PER_STATEMENT = 32
_UPSERTS = [None] + [_UPSERT_ROWS.format(rows=", ".join([_ROW] * n))
                     for n in range(1, ROWS_PER_STATEMENT + 1)]
_UPSERTS_NO_EXPIRY = [None] + [_UPSERT_ROWS.format(rows=", ".join([_ROW_NO_EXPIRY] * n))
                               for n in range(1, ROWS_PER_STATEMENT + 1)]
_CURRENT = "SELECT version, expires_at FROM state WHERE namespace = ? AND key = ?"
_AUDIT = ("INSERT INTO state_audit (at, namespace, key, op, version, peer_pid, peer_uid, "
          "correlation_id, agent_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)")
_AUDIT_REFUSAL = ("INSERT INTO state_audit (at, namespace, op, peer_pid, peer_uid, "
                  "correlation_id, agent_id, event, detail) VALUES (?, ?, 'refused', ?, ?, ?, ?, "
                  "?, ?)")
# Above every key that starts with the prefix, in SQLite's binary (UTF-8 byte) order.
_PREFIX_END = "\U0010ffff"


def create_schema(conn: sqlite3.Connection) -> None:
    have = {row[1] for row in conn.execute("PRAGMA table_info(state_audit)")}
    conn.executescript(SCHEMA)
    for name, sql_type in ADDED_AUDIT_COLUMNS:
        if have and name not in have:
            conn.execute(f"ALTER TABLE state_audit ADD COLUMN {name} {sql_type}")


def encode_value(value) -> str:
    return orjson.dumps(value).decode()


# ---- writes: run by the writer thread only, inside its transaction ------------------------------
# `audit` is None when auditing is off, else (peer_pid, peer_uid, correlation_id, agent_id).

class KnownVersions:
    """The version and expiry of keys this writer wrote, so a write need not read its row first.

    Only the writer thread uses it. An entry is trusted only while its key is live: only the
    daemon changes live keys (migrate-state inserts absent or expired ones only), so an expired
    or unknown key is read from the table. An op updates the book only after its statements ran,
    and the writer forgets everything after a rollback (`forget_all`), so the book never holds
    a version that was not committed. Bounded: the oldest entries make room for new ones.
    """

    def __init__(self, max_entries: int = 20_000):
        self.max_entries = max_entries
        self._entries: dict[tuple, tuple] = {}

    def current(self, conn, namespace: str, key: str, now: float) -> int:
        """The key's live version, 0 when absent or expired."""
        entry = self._entries.get((namespace, key))
        if entry is None or (entry[1] is not None and entry[1] <= now):
            entry = conn.execute(_CURRENT, (namespace, key)).fetchone()
            if entry is None:
                return 0
        return entry[0] if _alive(entry[1], now) else 0

    def wrote_all(self, rows: dict[tuple, tuple]) -> None:
        """Remember {(namespace, key): (version, expires_at)} just written."""
        entries = self._entries
        while len(entries) + len(rows) > self.max_entries and entries:
            del entries[next(iter(entries))]  # the oldest
        entries.update(rows)

    def forget(self, namespace: str, key: str) -> None:
        self._entries.pop((namespace, key), None)

    def forget_namespace(self, namespace: str) -> None:
        for known in [known for known in self._entries if known[0] == namespace]:
            del self._entries[known]

    def forget_all(self) -> None:
        self._entries.clear()


def set_value(conn, known: KnownVersions, namespace: str, key: str, value_json: str,
              expires_at: float | None, if_version: int | None, audit) -> dict:
    """The `state:set` reply: {namespace, key, version (the new one)}."""
    now = time.time()
    current = known.current(conn, namespace, key, now)
    if if_version is not None and if_version != current:
        raise KSIError(CONFLICT, f"{namespace}:{key} is at version {current}, not {if_version}",
                       {"namespace": namespace, "key": key, "current_version": current,
                        "if_version": if_version})
    version = current + 1
    conn.execute(_UPSERTS[1], (namespace, key, value_json, version, now, expires_at))
    _record(conn, audit, now, namespace, key, "set", version)
    known.wrote_all({(namespace, key): (version, expires_at)})
    return {"namespace": namespace, "key": key, "version": version}


def set_plain_many(conn, writes: list[tuple]) -> list[dict]:
    """Many `state:set`s without if_version, in order: (known, namespace, key, value_json,
    expires_at, audit) each. A key written twice is stored once, with its last value; each
    write still gets its own version (and its own audit row)."""
    now = time.time()
    known = writes[0][0]
    remembered = known._entries  # read inline: this loop runs once per write of the hot path
    rows: dict[tuple, tuple] = {}  # (namespace, key) -> (version, expires_at) it will hold
    upserts = []  # each write's row parameters, without expires_at (added below if any has one)
    expiring = False
    replies = []
    audited = []
    for _known, namespace, key, value_json, expires_at, audit in writes:
        name = (namespace, key)
        earlier = rows.get(name)  # written before in this group, else remembered, else read
        if earlier is None:
            earlier = remembered.get(name)
            if earlier is None or (earlier[1] is not None and earlier[1] <= now):
                earlier = (known.current(conn, namespace, key, now), None)
        # (an expired key counts as absent: it starts again at 1)
        version = earlier[0] + 1 if earlier[1] is None or earlier[1] > now else 1
        rows[name] = (version, expires_at)
        upserts.append((namespace, key, value_json, version, now))
        if expires_at is not None:
            expiring = True
        replies.append({"namespace": namespace, "key": key, "version": version})
        if audit is not None:
            audited.append((now, namespace, key, "set", version, *audit))
    if len(rows) < len(upserts):  # a key written twice: one statement may upsert a row once,
        upserts = list({row[:2]: row for row in upserts}.values())  # so its last row only
    if expiring:  # rows of both kinds: every row binds its expires_at
        statements = _UPSERTS
        upserts = [(*row, rows[row[:2]][1]) for row in upserts]
    else:
        statements = _UPSERTS_NO_EXPIRY
    for start in range(0, len(upserts), ROWS_PER_STATEMENT):
        chunk = upserts[start:start + ROWS_PER_STATEMENT]
        conn.execute(statements[len(chunk)], list(chain.from_iterable(chunk)))
    if audited:  # in the same transaction: the audit holds exactly the committed changes
        conn.executemany(_AUDIT, audited)
    known.wrote_all(rows)
    return replies


set_plain = Combinable(set_plain_many)


def delete_value(conn, known: KnownVersions, namespace: str, key: str, audit) -> int | None:
    """The version the key had when deleted, or None if it did not exist (or had expired)."""
    now = time.time()
    row = conn.execute("DELETE FROM state WHERE namespace = ? AND key = ? "
                       "RETURNING version, expires_at", (namespace, key)).fetchone()
    known.forget(namespace, key)
    if row is None or not _alive(row[1], now):
        return None
    _record(conn, audit, now, namespace, key, "delete", row[0])
    return row[0]


def clear_namespace(conn, known: KnownVersions, namespace: str, audit) -> int:
    now = time.time()
    rows = conn.execute("DELETE FROM state WHERE namespace = ? RETURNING expires_at",
                        (namespace,)).fetchall()
    known.forget_namespace(namespace)
    deleted = sum(1 for (expires_at,) in rows if _alive(expires_at, now))
    _record(conn, audit, now, namespace, None, "clear", None)
    return deleted


def purge_expired(conn, known: KnownVersions, audit) -> list[tuple[str, str, int]]:
    now = time.time()
    rows = conn.execute("DELETE FROM state WHERE expires_at IS NOT NULL AND expires_at <= ? "
                        "RETURNING namespace, key, version", (now,)).fetchall()
    for namespace, key, version in rows:
        known.forget(namespace, key)
        _record(conn, audit, now, namespace, key, "expire", version)
    return rows


def record_refusal(conn, event: str, detail: str, audit) -> None:
    """A request refused for permissions (`forbidden`), with who sent it."""
    conn.execute(_AUDIT_REFUSAL, (time.time(), event.partition(":")[0], *audit, event, detail))


def set_audit_retention(conn, keep_s: float, keep_rows: int) -> None:
    conn.execute("DELETE FROM state_audit_retention")
    conn.execute("INSERT INTO state_audit_retention VALUES (?, ?)", (keep_s, keep_rows))


def prune_audit(conn, keep_s: float, keep_rows: int) -> int:
    """Forget audit rows past the retention: older than keep_s, or beyond the newest keep_rows."""
    return conn.execute(
        "DELETE FROM state_audit WHERE at < ? OR id <= (SELECT max(id) FROM state_audit) - ?",
        (time.time() - keep_s, keep_rows)).rowcount


def _record(conn, audit, now, namespace, key, op, version) -> None:
    if audit is not None:
        conn.execute(_AUDIT, (now, namespace, key, op, version, *audit))


def _alive(expires_at: float | None, now: float) -> bool:
    return expires_at is None or expires_at > now


# ---- reads: on the reader connection (inline, on the event loop), or in order on the writer -------
# A read of a key with a write still queued or committing runs on the writer thread instead, in
# the queue behind that write, so it sees it (one connection is one ordered stream, PROTOCOL.md
# §1); the writer answers it after the commit, like the write itself.

_LIVE_VALUE = ("SELECT value, version, expires_at FROM state WHERE namespace = ? AND key = ? "
               "AND (expires_at IS NULL OR expires_at > ?)")
_LIVE_KEYS = ("SELECT key FROM state WHERE namespace = ? AND key >= ? AND key < ? "
              "AND (expires_at IS NULL OR expires_at > ?) ORDER BY key LIMIT ?")
_AUDIT_ENTRIES = (
    "SELECT id, at, namespace, key, op, version, peer_pid, peer_uid, correlation_id, agent_id, "
    "event, detail "
    "FROM state_audit WHERE (?1 IS NULL OR namespace = ?1) AND (?2 IS NULL OR key = ?2) "
    "ORDER BY id DESC LIMIT ?3")
_AUDIT_NAMES = ("id", "at", "namespace", "key", "op", "version", "peer_pid", "peer_uid",
                "correlation_id", "agent_id", "event", "detail")


def live_value(conn, namespace: str, key: str) -> tuple | None:
    """(value as JSON text, version, expires_at) of a live key, or None."""
    return conn.execute(_LIVE_VALUE, (namespace, key, time.time())).fetchone()


def live_keys(conn, namespace: str, prefix: str, limit: int) -> list[str]:
    rows = conn.execute(_LIVE_KEYS, (namespace, prefix, prefix + _PREFIX_END, time.time(),
                                     limit)).fetchall()
    return [key for (key,) in rows if key.startswith(prefix)]


def audit_entries(conn, namespace: str | None, key: str | None, limit: int) -> list[dict]:
    rows = conn.execute(_AUDIT_ENTRIES, (namespace, key, limit)).fetchall()
    return [dict(zip(_AUDIT_NAMES, row)) for row in reversed(rows)]


def get_in_order(conn, namespace: str, key: str) -> dict:
    """A writer op: `state:get` behind the writes queued before it."""
    entry = live_value(conn, namespace, key)
    if entry is None:
        return {"namespace": namespace, "key": key, "found": False, "value": None,
                "version": None}
    return {"namespace": namespace, "key": key, "found": True, "value": orjson.loads(entry[0]),
            "version": entry[1]}


def list_in_order(conn, namespace: str, prefix: str, limit: int) -> dict:
    """A writer op: `state:list` behind the writes queued before it."""
    keys = live_keys(conn, namespace, prefix, limit)
    return {"keys": keys, "count": len(keys)}


def audit_in_order(conn, enabled: bool, namespace: str | None, key: str | None,
                   limit: int) -> dict:
    """A writer op: `state:audit` behind the writes queued before it."""
    entries = audit_entries(conn, namespace, key, limit)
    return {"enabled": enabled, "entries": entries, "count": len(entries)}


class StateReader:
    """The inline reads, on the reader connection. A read the storage fails (a damaged page,
    an I/O error) answers `storage_error`, as a write does, not `handler_error`."""

    def __init__(self, conn: sqlite3.Connection, path: Path | None = None):
        self.conn, self.path = conn, path

    def get(self, namespace: str, key: str) -> tuple | None:
        """(value as JSON text, version, expires_at) of a live key, or None."""
        try:  # (free unless it raises)
            return live_value(self.conn, namespace, key)
        except sqlite3.Error as exc:
            raise self._coded(exc) from None

    def keys(self, namespace: str, prefix: str, limit: int) -> list[str]:
        try:
            return live_keys(self.conn, namespace, prefix, limit)
        except sqlite3.Error as exc:
            raise self._coded(exc) from None

    def audit(self, namespace: str | None, key: str | None, limit: int) -> list[dict]:
        try:
            return audit_entries(self.conn, namespace, key, limit)
        except sqlite3.Error as exc:
            raise self._coded(exc) from None

    def _coded(self, exc: sqlite3.Error) -> Exception:
        if not is_storage_failure(exc):
            return exc  # SQL of ours that is wrong: a handler error, a bug to fix
        return storage_error(exc, "state", self.path, reading=True)
