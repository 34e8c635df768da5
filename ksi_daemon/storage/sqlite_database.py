"""Opening a KSI SQLite database: WAL, the chosen `synchronous` level, an integrity check.

A database that cannot be opened or fails `PRAGMA integrity_check` is never replaced or
recreated: `DatabaseUnusable` carries a message naming the file and what to do, and start-up stops.
"""
from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Callable

import structlog

from .errors import SQLITE_FULL, disk_is_full, primary_code

log = structlog.get_logger("ksi.storage")

SYNCHRONOUS_LEVELS = ("FULL", "NORMAL")
BUSY_TIMEOUT_MS = 10_000


def _null(value: None) -> None:
    return value


# Python 3.11's sqlite3 binds only int, float, str and bytearray directly; None goes through its
# adaptation protocol, which looks for `__adapt__` and `__conform__` and formats an AttributeError
# message for each (found in a profile of the state writer). Every plain state write binds one
# (no expiry), on the writer thread that shares a CPU with the event loop. An adapter registered
# for None is found at the first lookup and returns it as is, still bound as NULL: 0.2–0.4 µs
# less per write (bench/sqlite_bind_micro.py). Process-wide: every KSI database gets it.
sqlite3.register_adapter(type(None), _null)


class DatabaseUnusable(Exception):
    """The database file is corrupt or unreadable; the message says which file and why."""


def open_writer(path: Path, synchronous: str, create_schema: Callable[[sqlite3.Connection], None]
                ) -> sqlite3.Connection:
    """The one read-write connection: checked, in WAL mode, with the schema in place."""
    if synchronous not in SYNCHRONOUS_LEVELS:
        raise ValueError(f"synchronous must be one of {', '.join(SYNCHRONOUS_LEVELS)}, "
                         f"not {synchronous!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    existed = path.exists()
    if existed and path.stat().st_size == 0:
        # SQLite takes an empty file for an empty database: say so, in case it was not meant to
        # be empty (a copy that failed, a truncated restore).
        log.warning("database_file_empty", path=str(path),
                    message=f"the database {path} is an empty file: it starts as an empty store")
        existed = False  # nothing to check yet
    try:
        conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
    except sqlite3.Error as exc:
        raise DatabaseUnusable(_unusable(path, exc)) from None
    try:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        if existed:
            verdict = [row[0] for row in conn.execute("PRAGMA integrity_check")]
            if verdict != ["ok"]:
                raise DatabaseUnusable(
                    f"the database {path} failed PRAGMA integrity_check: "
                    f"{'; '.join(verdict[:5])}. It was left untouched. Restore it from a backup "
                    "or move it aside to start with an empty one.")
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode.lower() != "wal":
            raise DatabaseUnusable(f"the database {path} could not be switched to WAL mode "
                                   f"(journal_mode is {mode})")
        conn.execute(f"PRAGMA synchronous = {synchronous}")
        create_schema(conn)
    except DatabaseUnusable:
        conn.close()
        raise
    except sqlite3.Error as exc:
        conn.close()
        raise DatabaseUnusable(_unusable(path, exc)) from None
    return conn


def open_reader(path: Path) -> sqlite3.Connection:
    """A read-only connection: in WAL mode it reads the last commit without waiting for writes."""
    conn = sqlite3.connect(read_only_uri(path), uri=True, isolation_level=None,
                           check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    return conn


def integrity_of(path: Path) -> list[str]:
    conn = sqlite3.connect(read_only_uri(path), uri=True)
    try:
        return [row[0] for row in conn.execute("PRAGMA integrity_check")]
    finally:
        conn.close()


def read_only_uri(path: Path) -> str:
    return Path(path).resolve().as_uri() + "?mode=ro"


def _unusable(path: Path, exc: Exception) -> str:
    if primary_code(exc) == SQLITE_FULL or disk_is_full(path):
        # (SQLite reports a full disk met while opening as a "disk I/O error")
        return (f"the database {path} cannot be used: {exc}: the disk holding it is full. It was "
                "left untouched. Free some space there and start again.")
    return (f"the database {path} cannot be used: {exc}. It was left untouched. Check its "
            "permissions, restore it from a backup, or move it aside to start with an empty one.")
