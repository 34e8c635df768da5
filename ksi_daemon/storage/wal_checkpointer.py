"""Checkpoints a WAL database mostly from a thread and connection of its own.

SQLite's automatic checkpoint runs inside the COMMIT that crosses its threshold (1000 WAL pages):
the writer thread, and every write queued behind it, waits for it. Under steady writes that was
a stall of 11–18 ms about every thousand commits (bench/RESULTS.md, "State", session 6): a
checkpoint fsyncs the WAL, where pages have piled up since the last one, then the database.
Here the writer turns the automatic checkpoint off, and a checkpoint is done in two steps:

1. the checkpointer thread runs `PRAGMA wal_checkpoint(PASSIVE)`, which waits for nobody: it
   fsyncs the WAL and copies its pages into the database while the writer goes on committing;
2. after its next commit the writer runs one more PASSIVE checkpoint itself, between two
   transactions: only the few pages committed meanwhile are left to copy, and as no write runs
   it can finish, which lets the next commit start the WAL over (a checkpoint that writes keep
   overtaking never finishes, and the WAL would grow without end).

What survives a crash does not change: a commit is in the WAL before its reply, checkpointed or
not.
"""
from __future__ import annotations

import sqlite3
import threading

import structlog

from .sqlite_database import BUSY_TIMEOUT_MS

log = structlog.get_logger("ksi.sqlite_writer")

CHECKPOINT_EVERY_COMMITS = 500  # about SQLite's own 1000 pages, at 1–2 pages per small commit
CHECKPOINT_AT_LEAST_EVERY_S = 1.0  # bounds the WAL when a few commits are large


class WalCheckpointer:
    def __init__(self, writer_conn: sqlite3.Connection, path: str, name: str):
        self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        writer_conn.execute("PRAGMA wal_autocheckpoint = 0")
        self.checkpoints = 0
        self._commits = 0  # since the last checkpoint: counted by the writer, reset by either
        self._copied = False  # step 1 is done: the writer's next commit does step 2
        self._due = threading.Event()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=f"{name}-checkpointer",
                                        daemon=True)

    @classmethod
    def for_writer(cls, writer_conn: sqlite3.Connection, name: str) -> WalCheckpointer | None:
        """A checkpointer for the writer's database, or None when it has no WAL (in memory, or
        not in WAL mode)."""
        path = writer_conn.execute("PRAGMA database_list").fetchone()[2]
        wal = writer_conn.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal"
        return cls(writer_conn, path, name) if path and wal else None

    def start(self) -> None:
        self._thread.start()

    def committed(self, writer_conn: sqlite3.Connection) -> None:
        """Called by the writer thread after each commit, outside any transaction."""
        if self._copied:  # step 2
            self._copied = False
            _checkpoint(writer_conn)
        self._commits += 1
        if self._commits >= CHECKPOINT_EVERY_COMMITS:
            self._commits = 0
            self._due.set()

    def stop(self) -> None:
        self._stopping = True
        self._due.set()
        self._thread.join()
        self.conn.close()

    def _run(self) -> None:
        while True:
            due = self._due.wait(CHECKPOINT_AT_LEAST_EVERY_S)
            self._due.clear()
            if self._stopping:
                return
            if not due:  # the timer: only if something was written since the last checkpoint
                if not self._commits:
                    continue
                self._commits = 0  # (a commit counted meanwhile may be lost: one is harmless)
            if _checkpoint(self.conn):  # step 1
                self.checkpoints += 1
                self._copied = True


def _checkpoint(conn: sqlite3.Connection) -> bool:
    """A PASSIVE checkpoint: copies what no reader still needs, waits for nobody."""
    try:
        conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        return True
    except sqlite3.Error as exc:  # e.g. the disk is full: the WAL grows, writes go on
        log.warning("wal_checkpoint_failed", error=str(exc))
        return False
