"""One writer thread per SQLite database, fed by a queue, committing in groups.

Every write is a function `op(conn, *args) -> result` run by the writer thread. The thread takes
whatever is queued, runs it all in one transaction (each op inside its own savepoint, so one op
that raises fails alone), commits once, and only then resolves the callers' futures: a caller
that got its result knows its write is committed. While one commit runs, new writes queue up and
go into the next one (group commit), so many writers share one fsync.
"""
from __future__ import annotations

import asyncio
import queue
import sqlite3
import threading
from typing import Any, Callable

_STOP = object()


class WriterStopped(Exception):
    """The writer no longer takes work (the daemon is shutting down)."""


class SqliteWriter:
    def __init__(self, conn: sqlite3.Connection, name: str = "sqlite-writer",
                 max_batch: int = 1024):
        # The connection was opened with check_same_thread=False and is used only by the thread.
        self.conn = conn
        self.max_batch = max_batch
        self.loop: asyncio.AbstractEventLoop | None = None
        self.commits = 0
        self.writes = 0
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._stopping = False

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._thread.start()

    def submit(self, op: Callable[..., Any], *args) -> asyncio.Future:
        """Queue `op(conn, *args)`; the future resolves after the commit that holds it."""
        if self._stopping:
            raise WriterStopped("the database writer is stopping")
        future = self.loop.create_future()
        self._queue.put((op, args, future))
        return future

    async def stop(self) -> None:
        """Finish everything already queued, commit, close the connection."""
        if self._stopping:
            return
        self._stopping = True
        self._queue.put(_STOP)
        await asyncio.to_thread(self._thread.join)

    def stop_blocking(self) -> None:
        self._stopping = True
        self._queue.put(_STOP)
        self._thread.join()

    # ---- the writer thread --------------------------------------------------------------------

    def _run(self) -> None:
        stop = False
        try:
            while not stop:
                batch = [self._queue.get()]
                while len(batch) < self.max_batch:
                    try:
                        batch.append(self._queue.get_nowait())
                    except queue.Empty:
                        break
                if batch[-1] is _STOP or _STOP in batch:
                    stop = True
                    batch = [item for item in batch if item is not _STOP]
                if batch:
                    self._commit_batch(batch)
        finally:
            self.conn.close()

    def _commit_batch(self, batch: list) -> None:
        outcomes = []
        conn = self.conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            for op, args, future in batch:
                conn.execute("SAVEPOINT op")
                try:
                    outcomes.append((future, op(conn, *args), None))
                    conn.execute("RELEASE op")
                except Exception as exc:  # noqa: BLE001 - handed to the caller that asked
                    conn.execute("ROLLBACK TO op")
                    conn.execute("RELEASE op")
                    outcomes.append((future, None, exc))
            conn.execute("COMMIT")
        except Exception as exc:  # noqa: BLE001 - the commit failed: nothing in it is durable
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            outcomes = [(future, None, exc) for _op, _args, future in batch]
        self.commits += 1
        self.writes += len(batch)
        # One wake-up of the event loop per batch, not one per write.
        self.loop.call_soon_threadsafe(_resolve_all, outcomes)


def _resolve_all(outcomes: list) -> None:
    for future, result, exc in outcomes:
        if future.done():  # the caller gave up (timeout, cancellation); the write still stands
            continue
        if exc is None:
            future.set_result(result)
        else:
            future.set_exception(exc)
