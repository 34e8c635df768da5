"""One way for a plugin to open its SQLite database, and to close it.

`PluginDatabase.open` checks and opens the file (storage/sqlite_database.py), starts its writer
thread with the WAL checkpointer (sqlite_writer.py, wal_checkpointer.py), opens a read-only
connection for inline reads if the plugin reads, and starts the writer's deadline sweep;
`close()` stops them in the reverse order. A plugin that opened its database by hand forgot a
piece sooner or later (the agent writer had no deadline sweep, so a write stuck behind a lock
never answered).
"""
from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any, Callable

import structlog

from .sqlite_database import DatabaseUnusable, open_reader, open_writer
from .loop_writer import LoopWriter
from .sqlite_writer import SqliteWriter

log = structlog.get_logger("ksi.storage")


class PluginDatabase:
    def __init__(self, writer: SqliteWriter, reader: sqlite3.Connection | None, loaded: Any,
                 sweep: asyncio.Task | None):
        self.writer, self.reader, self.loaded = writer, reader, loaded
        self._sweep = sweep

    @classmethod
    def open(cls, path: Path, *, name: str, synchronous: str,
             create_schema: Callable[[sqlite3.Connection], None], deadline_s: float | None,
             reader: bool = True, load: Callable[[sqlite3.Connection], Any] | None = None,
             after_rollback: Callable[[], None] | None = None,
             on_commits: Callable[[list], None] | None = None,
             report_degraded: Callable[[str | None], None] | None = None,
             max_page_count: int | None = None,
             commit_on_loop: bool = False) -> PluginDatabase:
        """Open `path` for the plugin `name`; call it on the event loop (in `ksi_startup`).

        `load(conn)` reads what the plugin keeps in memory, on the writer's connection before its
        thread starts; its result is `.loaded`. `deadline_s`: writes not committed by then
        answer `timeout` (SqliteWriter.enforce_deadlines). `report_degraded(reason | None)`
        hears storage failures and the recovery (PluginContext.report_degraded).
        `max_page_count` caps the file's size in pages: for tests that need a full disk.
        `commit_on_loop` (with synchronous NORMAL only): commit on the event loop instead of a
        writer thread (storage/loop_writer.py; the completion journal's choice).

        An unusable database stops start-up (SystemExit) on purpose: serving without the data,
        or over a fresh file, would answer "not found" for data the user still has.
        """
        conn = open_writer_or_exit(path, name, synchronous, create_schema)
        if max_page_count is not None:
            conn.execute(f"PRAGMA max_page_count = {int(max_page_count)}")
        loaded = load(conn) if load is not None else None
        kind = LoopWriter if commit_on_loop and synchronous.upper() == "NORMAL" else SqliteWriter
        writer = kind(conn, name=f"{name}-writer", deadline_s=deadline_s,
                      after_rollback=after_rollback, on_commits=on_commits,
                      report_degraded=report_degraded)
        loop = asyncio.get_running_loop()
        writer.start(loop)
        sweep = loop.create_task(writer.enforce_deadlines(), name=f"{name}-write-deadlines") \
            if deadline_s is not None else None
        return cls(writer, open_reader(path) if reader else None, loaded, sweep)

    async def close(self) -> None:
        """Stop the sweep, commit what is queued, stop the writer; close the reader."""
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        await self.writer.stop()
        if self.reader is not None:
            self.reader.close()
            self.reader = None


def open_writer_or_exit(path: Path, name: str, synchronous: str,
                        create_schema: Callable[[sqlite3.Connection], None]) -> sqlite3.Connection:
    """The checked read-write connection, or start-up stops naming the file and the problem."""
    try:
        return open_writer(path, synchronous.upper(), create_schema)
    except DatabaseUnusable as exc:
        log.critical("database_unusable", database=name, path=str(path), error=str(exc))
        raise SystemExit(f"ksi: {name} database: {exc}") from None
