"""The write-ahead journal of completion requests: what was accepted, and how each one ended.

A request is written here (and committed) before its "queued" reply, with everything needed to
run it again; its outcome is committed before the result is pushed. So after any stop, a row
without an outcome is exactly a request nobody got an answer to: it runs again, once. Finished
rows are kept for a while so that a repeated request_id is answered from them instead of run.

Under `synchronous` NORMAL the writes are committed on the event loop itself (LoopWriter,
storage/loop_writer.py): such a commit does not fsync and takes tens of microseconds, while
handing it to a writer thread put the outcome's commit, and so the reply, behind whatever the
loop ran meanwhile (litellm's success logging, about a millisecond after every call, see
docs/COMPLETION.md). Under FULL the commit fsyncs, and the writer thread keeps it off the loop.
The rows are read only at start, before anything is written.
"""
from __future__ import annotations

import asyncio
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from ...storage.plugin_database import PluginDatabase
from ...storage.sqlite_writer import SqliteWriter, WriterStopped

PENDING = "pending"
# Turns-stored marks are written in groups: a mark lost to a stop costs only a look into the
# conversation store at the next start (which stores what is missing, never twice).
MARKS_EVERY_S = 0.5

SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    request_id     TEXT PRIMARY KEY,
    session_id     TEXT NOT NULL,
    new_session    INTEGER NOT NULL,
    model          TEXT NOT NULL,
    agent_id       TEXT,
    correlation_id TEXT,
    request        BLOB NOT NULL,
    accepted_at    REAL NOT NULL,
    state          TEXT NOT NULL,
    outcome        BLOB,
    ended_at       REAL,
    turns_stored   INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS requests_by_end ON requests (ended_at) WHERE ended_at IS NOT NULL;
-- The tool loop's steps, each committed before the next step (a table of its own, so a journal
-- file from before tools simply gains it): the model's message asking for tools, then one row
-- per tool message answering it, with the call's record.
CREATE TABLE IF NOT EXISTS steps (
    request_id TEXT NOT NULL,
    seq        INTEGER NOT NULL,
    message    BLOB NOT NULL,
    record     BLOB,
    PRIMARY KEY (request_id, seq)
) WITHOUT ROWID;
"""


@dataclass
class Entry:
    """One journaled request as read back at start."""
    request_id: str
    session_id: str
    new_session: bool
    model: str
    agent_id: str | None
    correlation_id: str | None
    request: dict
    accepted_at: float
    state: str = PENDING
    outcome: dict | None = None
    ended_at: float | None = None
    turns_stored: bool = False
    # The tool loop's committed steps, oldest first: (message, call record or None).
    steps: list[tuple[dict, dict | None]] = field(default_factory=list)


class Journal:
    def __init__(self, path: Path, synchronous: str, deadline_s: float, report_degraded=None):
        self.path = path
        self.database = PluginDatabase.open(
            path, name="completion-journal", synchronous=synchronous,
            create_schema=_create_schema, deadline_s=deadline_s, reader=False, load=_read_all,
            commit_on_loop=True, report_degraded=report_degraded)
        self.writer: SqliteWriter = self.database.writer
        self._marks: list[str] = []  # request ids whose turns are stored, not yet marked

    def read_all(self) -> list[Entry]:
        """Every row as it was at start, in the order the requests were accepted."""
        return self.database.loaded

    # Each returns a future resolved after the commit; `on_commit(result, error)` runs then
    # whether or not anyone awaits the future (see SqliteWriter.submit).

    def accept(self, entry: Entry, on_commit=None):
        return self._write(_accept, entry, on_commit=on_commit)

    def finish(self, request_id: str, state: str, outcome: dict, on_commit=None):
        # Committed at once: the reply waits on it, and at the end of this pass of the loop it
        # would wait behind litellm's success logging, which the model call just scheduled.
        return self._write(_finish, request_id, state, orjson.dumps(outcome), time.time(),
                           on_commit=on_commit, now=True)

    def step(self, request_id: str, seq: int, message: dict, record: dict | None = None):
        """One step of the tool loop; the loop goes on once it is committed."""
        return self._write(_step, request_id, seq, orjson.dumps(message),
                           None if record is None else orjson.dumps(record), now=True)

    def turns_stored(self, request_id: str) -> None:
        self._marks.append(request_id)
        if len(self._marks) == 1:
            asyncio.get_running_loop().call_later(MARKS_EVERY_S, self._write_marks)

    def prune(self, keep: int, keep_s: float):
        """Forget finished requests beyond the newest `keep`, or ended more than keep_s ago."""
        return self._write(_prune, keep, time.time() - keep_s)

    def _write(self, op, *args, on_commit=None, now=False):
        future = self.writer.submit(op, *args, on_commit=on_commit, now=now)
        # Some writes are not awaited: their failure is reported by on_commit or not at all,
        # never as "exception was never retrieved".
        future.add_done_callback(_retrieve)
        return future

    def _write_marks(self) -> None:
        marks, self._marks = self._marks, []
        if marks:
            try:
                self._write(_mark_turns_stored, marks)
            except WriterStopped:  # closed meanwhile: the next start looks the turns up
                pass

    async def close(self) -> None:
        self._write_marks()
        await self.database.close()


# ---- the writer only (its thread, or the loop under NORMAL) ------------------------------------

def _create_schema(conn: sqlite3.Connection) -> None:
    conn.executescript(SCHEMA)


def _read_all(conn: sqlite3.Connection) -> list[Entry]:
    rows = conn.execute(
        "SELECT request_id, session_id, new_session, model, agent_id, correlation_id, "
        "request, accepted_at, state, outcome, ended_at, turns_stored "
        "FROM requests ORDER BY rowid").fetchall()
    entries = [Entry(r[0], r[1], bool(r[2]), r[3], r[4], r[5], orjson.loads(r[6]), r[7], r[8],
                     orjson.loads(r[9]) if r[9] is not None else None, r[10], bool(r[11]))
               for r in rows]
    by_id = {entry.request_id: entry for entry in entries}
    for request_id, message, record in conn.execute(
            "SELECT request_id, message, record FROM steps ORDER BY request_id, seq"):
        entry = by_id.get(request_id)
        if entry is not None:
            entry.steps.append((orjson.loads(message),
                                None if record is None else orjson.loads(record)))
    return entries


def _accept(conn, e: Entry) -> None:
    # A request_id forgotten after its retention may come again: the new request replaces it.
    conn.execute(
        "INSERT OR REPLACE INTO requests (request_id, session_id, new_session, model, agent_id, "
        "correlation_id, request, accepted_at, state) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (e.request_id, e.session_id, int(e.new_session), e.model, e.agent_id, e.correlation_id,
         orjson.dumps(e.request), e.accepted_at, PENDING))
    conn.execute("DELETE FROM steps WHERE request_id = ?", (e.request_id,))


def _step(conn, request_id: str, seq: int, message: bytes, record: bytes | None) -> None:
    conn.execute("INSERT OR REPLACE INTO steps (request_id, seq, message, record) "
                 "VALUES (?, ?, ?, ?)", (request_id, seq, message, record))


def _finish(conn, request_id: str, state: str, outcome: bytes, ended_at: float) -> None:
    conn.execute("UPDATE requests SET state = ?, outcome = ?, ended_at = ? WHERE request_id = ?",
                 (state, outcome, ended_at, request_id))


def _mark_turns_stored(conn, request_ids: list[str]) -> None:
    conn.executemany("UPDATE requests SET turns_stored = 1 WHERE request_id = ?",
                     [(request_id,) for request_id in request_ids])


def _prune(conn, keep: int, ended_before: float) -> int:
    removed = conn.execute("DELETE FROM requests WHERE ended_at < ?", (ended_before,)).rowcount
    removed += conn.execute(
        "DELETE FROM requests WHERE ended_at IS NOT NULL AND rowid NOT IN (SELECT rowid FROM "
        "requests WHERE ended_at IS NOT NULL ORDER BY ended_at DESC LIMIT ?)", (keep,)).rowcount
    if removed:
        conn.execute("DELETE FROM steps WHERE request_id NOT IN (SELECT request_id FROM requests)")
    return removed


def _retrieve(future) -> None:
    if not future.cancelled():
        future.exception()
