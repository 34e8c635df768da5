"""A database that fails under a request answers `storage_error`, not `handler_error`.

A full disk, an I/O error, a read-only or locked file is not the handler's fault nor the
request's: the client is told what it is, with `details.retry_after_s` where trying again later
may succeed (space freed, a lock released), and the plugin shows as degraded in `system:health`
until a write commits again (SqliteWriter.report_degraded). Anything else sqlite3 raises (a
constraint, SQL the plugin got wrong) stays a handler error: that is a bug to fix.
"""
from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from ..protocol import STORAGE_ERROR, KSIError

# SQLite's primary result codes (sqlite3.h) that describe the storage, not the statement.
SQLITE_BUSY, SQLITE_LOCKED, SQLITE_READONLY, SQLITE_IOERR = 5, 6, 8, 10
SQLITE_CORRUPT, SQLITE_FULL, SQLITE_CANTOPEN, SQLITE_PROTOCOL = 11, 13, 14, 15
SQLITE_NOLFS, SQLITE_NOTADB = 22, 26
# Seconds after which trying again may help; the codes absent here need a person (permissions,
# a damaged file).
RETRY_AFTER_S = {SQLITE_FULL: 5.0, SQLITE_IOERR: 5.0, SQLITE_BUSY: 1.0, SQLITE_LOCKED: 1.0,
                 SQLITE_PROTOCOL: 1.0}
STORAGE_FAILURES = frozenset({*RETRY_AFTER_S, SQLITE_READONLY, SQLITE_CORRUPT, SQLITE_CANTOPEN,
                              SQLITE_NOLFS, SQLITE_NOTADB})
# Less free space than this on the database's filesystem counts as a full disk.
NEARLY_FULL_BYTES = 1 << 20


def primary_code(exc: BaseException) -> int | None:
    code = getattr(exc, "sqlite_errorcode", None)
    return None if code is None else code & 0xFF


def is_storage_failure(exc: BaseException) -> bool:
    return isinstance(exc, sqlite3.Error) and primary_code(exc) in STORAGE_FAILURES


def storage_error(exc: sqlite3.Error, database: str, path: Path | None = None,
                  reading: bool = False) -> KSIError:
    """`exc` as the coded error a client gets: what failed, and when to try again.
    `reading`: it failed a read, which stored nothing by its nature."""
    code = primary_code(exc)
    details = {"database": database, "sqlite_error": getattr(exc, "sqlite_errorname", None)}
    retry_after_s = RETRY_AFTER_S.get(code)
    if retry_after_s is not None:
        details["retry_after_s"] = retry_after_s
    cause = str(exc)
    if code != SQLITE_FULL and path is not None and disk_is_full(path):
        cause += " (the disk holding it is full)"
    outcome = "the value could not be read" if reading else "nothing of this request was stored"
    return KSIError(STORAGE_ERROR, f"the {database} database failed: {cause}; {outcome}",
                    details)


def disk_is_full(path: Path) -> bool:
    """Whether the filesystem holding `path` (or its nearest existing parent) has (nearly) no
    space left for this user; False when that cannot be told."""
    path = Path(path)
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        stat = os.statvfs(path)
    except OSError:
        return False
    return stat.f_bavail * stat.f_frsize < NEARLY_FULL_BYTES
