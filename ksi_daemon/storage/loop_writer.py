"""Group commit on the event loop itself, for `synchronous=NORMAL` only.

Under NORMAL a WAL commit does not fsync (about 15–25 µs here), so handing each group to a
thread and back (a wake-up, two GIL hand-offs, `call_soon_threadsafe`) may cost more than the
commit it moves off the loop. `LoopWriter` keeps SqliteWriter's contract (submit, the futures
or owed replies settled after the commit, group commit, savepoint retry, storage errors, the
deadline sweep, stop) but runs each group on the loop: the writes queued during one pass of the
loop are committed in one transaction by a callback at the start of the next pass, then
answered at once. What survives a kill -9 is unchanged: a reply still leaves only after the
COMMIT that holds its write returned.

Used by the completion journal (plugins/completion/journal.py), whose commit must precede a
reply that would otherwise wait behind litellm's logging task; the state plugin keeps the
thread (docs/STATE.md, "Tried and dropped"). Trade-offs: a commit blocks the loop for its
duration, and a lock held by another process blocks it for up to BUSY_TIMEOUT_MS before the group fails with `storage_error` (the thread would wait 10 s without
blocking anyone); the WalCheckpointer's second step (a PASSIVE checkpoint of the few pages
committed meanwhile, which may fsync) runs on the loop too, once per checkpoint.
"""
from __future__ import annotations

import asyncio
from itertools import repeat, starmap

import structlog

from .sqlite_writer import SqliteWriter

log = structlog.get_logger("ksi.sqlite_writer")
BUSY_TIMEOUT_MS = 50  # the longest the loop may wait for another process's write lock


class LoopWriter(SqliteWriter):
    def __init__(self, conn, *args, **kwargs):
        super().__init__(conn, *args, **kwargs)
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        self._stopped = False

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        if self.checkpointer is not None:
            self.checkpointer.start()

    def _wake_writer(self) -> None:
        # The end of the loop's pass that queued the group (SqliteWriter.submit schedules it):
        # commit here, where the thread would have been woken.
        self._wake_scheduled = False
        self._commit_queued()

    def _commit_queued(self) -> None:
        items, take = self._items, self._items.popleft
        while items:
            batch = list(starmap(take, repeat((), min(len(items), self.max_batch))))
            self._committing = batch
            self._commit_batch(batch)
        self._committing = []

    def _hand_over(self, outcomes: list) -> None:
        self._resolve_all(outcomes)  # already on the loop: answered right after the commit

    async def stop(self) -> None:
        self.stop_blocking()

    def stop_blocking(self) -> None:
        if self._stopped:
            return
        self._stopping = self._stopped = True
        self._commit_queued()  # everything queued before the stop
        if self.checkpointer is not None:
            self.checkpointer.stop()
        self.conn.close()
        log.info("database_writer_stopped", writer=self._thread.name, commits=self.commits,
                 writes=self.writes)
