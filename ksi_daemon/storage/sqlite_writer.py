"""One writer thread per SQLite database, fed by a queue, committing in groups.

Every write is a function `op(conn, *args) -> result` run by the writer thread. The thread takes
whatever is queued, runs it all in one transaction, commits once, and only then resolves the
callers' futures: a caller that got its result knows its write is committed. While one commit
runs, new writes queue up and go into the next one (group commit), so many writers share one
fsync. An op made with `Combinable(many)` has consecutive writes of its own run by one call,
`many(conn, [args, ...]) -> [result, ...]`, in fewer statements.

An op may refuse with `KSIError` only before it has written anything (a failed precondition such
as `conflict`), so a refusal needs no rollback. Any other exception rolls the batch back and runs
it again with one savepoint per op, so the op that failed fails alone and the others commit.
A failure of the storage itself (a full disk, an I/O error: storage/errors.py) reaches the caller
as `storage_error`, and the owner hears it through `report_degraded` until a write commits again.
"""
from __future__ import annotations

import asyncio
import os
import queue
import sqlite3
import threading
import time
from collections import deque
from itertools import groupby, repeat, starmap
from operator import itemgetter
from pathlib import Path
from typing import Any, Callable

import structlog

from ..protocol import TIMEOUT, UNAVAILABLE, KSIError
from .errors import is_storage_failure, storage_error
from .wal_checkpointer import WalCheckpointer

log = structlog.get_logger("ksi.sqlite_writer")

_STOP = object()
# Commits slower than this (an fsync: synchronous FULL) let the next group gather first, for at
# most one commit's time and never longer than GATHER_AT_MOST_S (a disk stalling for seconds must
# not add its stall to every write).
GATHER_ABOVE_S = 0.0002
GATHER_AT_MOST_S = 0.005


class WriterStopped(KSIError):
    """The writer no longer takes work (the daemon is shutting down): `unavailable`."""

    def __init__(self, message: str):
        super().__init__(UNAVAILABLE, message)


class Combinable:
    """An op whose consecutive writes the writer runs in one call of `many(conn, [args, ...])`,
    which returns their results in order; called alone, it is a batch of one."""
    __slots__ = ("many",)

    def __init__(self, many: Callable[[sqlite3.Connection, list[tuple]], list]):
        self.many = many

    def __call__(self, conn: sqlite3.Connection, *args) -> Any:
        return self.many(conn, [args])[0]


class SqliteWriter:
    def __init__(self, conn: sqlite3.Connection, name: str = "sqlite-writer",
                 max_batch: int = 1024, deadline_s: float | None = None,
                 after_rollback: Callable[[], None] | None = None,
                 on_commits: Callable[[list], None] | None = None,
                 report_degraded: Callable[[str | None], None] | None = None):
        # The connection was opened with check_same_thread=False and is used only by the thread.
        self.conn = conn
        self.path = conn.execute("PRAGMA database_list").fetchone()[2] or None
        # Called on the loop with what fails in the storage (a full disk), then with None once a
        # write commits again: the plugin shows as degraded in system:health meanwhile.
        self.report_degraded = report_degraded
        self.failure: str | None = None  # set by the thread: the storage failure not yet cured
        self._failed_now: str | None = None  # the batch being committed failed so
        self._reported_failure: str | None = None
        # Called on the thread after a transaction was rolled back: what the ops remember of
        # the database (the state plugin's known versions) must forget what did not commit.
        self.after_rollback = after_rollback
        # Called on the loop with each commit's outcomes, [((op, args, future, on_commit,
        # queued_at), result, error), ...], instead of the writes' own on_commit callbacks and
        # the settling of their futures, which it must do itself (`run_on_commit`, `settle`):
        # an owner whose writes are mostly alike handles them in one pass (the state plugin's
        # sets) rather than with a callback and a second pass each.
        self.on_commits = on_commits
        self.checkpointer = WalCheckpointer.for_writer(conn, name)
        self.max_batch = max_batch
        self.loop: asyncio.AbstractEventLoop | None = None
        self.commits = 0
        self.writes = 0
        # Writes wait in `_items`; `_wake` carries wake-up tokens for the thread, at most one per
        # pass of the event loop (see submit), so a burst of writes costs one thread wake-up.
        self._items: deque = deque()
        self._wake: queue.SimpleQueue = queue.SimpleQueue()
        self._wake_scheduled = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._stopping = False
        # See enforce_deadlines(): when the current pass of the loop queued its writes, and the
        # group the thread is committing.
        self.deadline_s = deadline_s
        self._pass_queued_at = 0.0
        self._committing: list = []
        self._commit_s = 0.0  # the last COMMIT's own duration, measured by the thread
        self._last_batch = 0  # how many writes it held

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        if self.checkpointer is not None:
            self.checkpointer.start()
        self._thread.start()

    def submit(self, op: Callable[..., Any], *args,
               on_commit: Callable[[Any, BaseException | None], None] | None = None,
               future=None, now: bool = False) -> asyncio.Future:
        """Queue `op(conn, *args)`; the future resolves after the commit that holds it.

        `future`: resolve this instead of a new asyncio future; anything with done(),
        set_result() and set_exception() will do (a request context owing its reply).

        `on_commit(result, error)` runs on the event loop when the outcome is known, just before
        the future is resolved, even if the caller cancelled the future meanwhile (the write
        still happens): what must follow the database, not the caller, goes there.

        `now`: start the commit at once instead of at the end of the loop's pass, for a lone
        write whose reply waits on it (the LoopWriter commits it within this call).
        """
        if self._stopping:
            raise WriterStopped(f"the {self._thread.name} is stopping (the daemon is shutting "
                                "down)")
        if future is None:
            future = self.loop.create_future()
        if not self._wake_scheduled:
            # Wake the thread once the loop has run what is ready now: waking it per write made
            # it fight the loop for the GIL while the rest of the burst was still being queued.
            self._wake_scheduled = True
            self._pass_queued_at = time.monotonic()
            self.loop.call_soon(self._wake_writer)
        self._items.append((op, args, future, on_commit, self._pass_queued_at))
        if now:  # (the wake-up scheduled above then finds nothing left to do)
            self._wake_writer()
        return future

    def waiting(self) -> int:
        """Writes queued or in the group being committed (a figure for metrics)."""
        return len(self._items) + len(self._committing)

    def _wake_writer(self) -> None:
        self._wake_scheduled = False
        self._wake.put(None)

    async def enforce_deadlines(self, period_s: float = 0.25) -> None:
        """Answer `timeout` for writes not committed within `deadline_s` (a supervised service).

        One sweep a quarter second replaces a timer per write: the router's per-request
        `asyncio.timeout` was a visible share of a write's time on the event loop. A write that
        timed out is not withdrawn; it commits when the writer gets to it.
        """
        if self.deadline_s is None:  # a writer made without a deadline has nothing to sweep
            return
        while True:
            await asyncio.sleep(period_s)
            too_old = time.monotonic() - self.deadline_s
            # Oldest first: the group being committed, then what waits. Each is copied in one C
            # call, under the GIL; an item the thread takes in between waits for the next sweep.
            for _op, _args, future, _on_commit, queued_at in [*self._committing, *self._items]:
                if queued_at > too_old:
                    break
                if not future.done():
                    future.set_exception(KSIError(
                        TIMEOUT, f"the write was not committed within {self.deadline_s} s "
                        "(the database is slow or stuck); it may still commit later"))

    async def stop(self) -> None:
        """Finish everything already queued, commit, close the connection."""
        if self._stopping:
            return
        self._stopping = True
        self._wake.put(_STOP)
        await asyncio.to_thread(self._thread.join)

    def stop_blocking(self) -> None:
        self._stopping = True
        self._wake.put(_STOP)
        self._thread.join()

    # ---- the writer thread --------------------------------------------------------------------

    def _run(self) -> None:
        items, wake = self._items, self._wake
        take = items.popleft
        _never_preempt_the_event_loop()
        stop = False
        try:
            while not stop:
                stop = wake.get() is _STOP
                while not wake.empty():  # one pass serves every token that piled up meanwhile
                    stop = wake.get_nowait() is _STOP or stop
                if not stop and self._commit_s >= GATHER_ABOVE_S and self._last_batch > 1:
                    stop = self._gather()
                # Everything queued before a stop was appended before its token: none is lost.
                while items:
                    # (only this thread takes items: at least this many are there)
                    batch = list(starmap(take, repeat((), min(len(items), self.max_batch))))
                    self._committing = batch
                    self._commit_batch(batch)
                    self._committing = []  # (committed: waiting() counts only what is left)
        finally:
            if self.checkpointer is not None:
                self.checkpointer.stop()
            self.conn.close()
            # How well commits were shared (bench/state_bench.py reads this line).
            log.info("database_writer_stopped", writer=self._thread.name, commits=self.commits,
                     writes=self.writes)

    def _gather(self) -> bool:
        """Let a group form before a slow commit; True if a stop token came meanwhile.

        With one request in flight per client and a commit slower than a client's round trip,
        group commit settles into two halves of the clients taking turns (one half commits while
        the other is answered and writes again): half the writes per fsync. Waiting while writes
        keep arriving, a quarter of a commit's time at most between two arrivals and one commit's
        time in all, lets both halves into one commit. Fast commits (synchronous NORMAL: no fsync)
        never wait: there the wait would cost more than the commit it saves; nor does a lone
        writer (the last commit held one write), which would only wait longer for its reply.
        """
        wake, commit_s = self._wake, min(self._commit_s, GATHER_AT_MOST_S)
        give_up = time.perf_counter() + commit_s
        while True:
            left = give_up - time.perf_counter()
            if left <= 0:
                return False
            try:
                if wake.get(timeout=min(commit_s / 4, left)) is _STOP:
                    return True
            except queue.Empty:  # nothing arrived for a while: the group is complete
                return False

    def _commit_batch(self, batch: list) -> None:
        changes_before, self._failed_now = self.conn.total_changes, None
        try:
            outcomes = self._run_in_one_transaction(batch, savepoints=False)
        except _RetryWithSavepoints:
            try:
                outcomes = self._run_in_one_transaction(batch, savepoints=True)
            except Exception as exc:  # noqa: BLE001 - the commit failed: nothing is durable
                outcomes = self._all_failed(batch, exc)
        except Exception as exc:  # noqa: BLE001
            outcomes = self._all_failed(batch, exc)
        if self._failed_now is not None:
            self.failure = self._failed_now
        elif self.failure is not None and self.conn.total_changes > changes_before:
            self.failure = None  # a write committed: the storage works again
        self.commits += 1
        self.writes += len(batch)
        self._last_batch = len(batch)
        self._hand_over(outcomes)
        if self.checkpointer is not None:  # after the replies were handed over
            self.checkpointer.committed(self.conn)

    def _hand_over(self, outcomes: list) -> None:
        # One wake-up of the event loop per batch, not one per write.
        self.loop.call_soon_threadsafe(self._resolve_all, outcomes)

    def _all_failed(self, batch: list, exc: Exception) -> list:
        error = self._coded(exc)
        return [(item, None, error) for item in batch]

    def _coded(self, exc: Exception) -> Exception:
        """A storage failure as `storage_error` (and remembered for health); others as they are."""
        if not is_storage_failure(exc):
            return exc
        error = storage_error(exc, self._thread.name.removesuffix("-writer"),
                              self.path and Path(self.path))
        if self.failure is None and self._failed_now is None:  # logged once, not per batch
            log.error("database_write_failed", writer=self._thread.name, error=str(exc),
                      details=error.details)
        self._failed_now = error.message
        return error

    def _report_health(self) -> None:
        failure = self._reported_failure = self.failure
        if failure is None:
            log.info("database_writes_resumed", writer=self._thread.name)
        if self.report_degraded is not None:
            try:
                self.report_degraded(failure)
            except Exception:  # noqa: BLE001 - the writes must be answered all the same
                log.exception("report_degraded_failed")

    def _resolve_all(self, outcomes: list) -> None:
        """On the event loop: each write's commit callback, then its future (or the owner's
        `on_commits` hook, which does both), in submit order."""
        if self.failure != self._reported_failure:  # the storage failed, or works again
            self._report_health()
        if self.on_commits is not None:
            try:
                return self.on_commits(outcomes)
            except Exception:  # noqa: BLE001 - the futures must be resolved all the same
                log.exception("on_commits_failed")
            for (_op, _args, future, _on_commit, _queued_at), result, exc in outcomes:
                if not future.done():
                    settle(future, result, exc)
            return
        for (_op, _args, future, on_commit, _queued_at), result, exc in outcomes:
            if on_commit is not None:
                run_on_commit(on_commit, result, exc)
            settle(future, result, exc)

    def _run_in_one_transaction(self, batch: list, savepoints: bool) -> list:
        conn = self.conn
        outcomes = []
        conn.execute("BEGIN IMMEDIATE")
        try:
            # Consecutive writes of one op form a run (grouped in C: this is per write).
            for op, run in groupby(batch, _op_of):
                many = None if savepoints else getattr(op, "many", None)
                if many is not None:
                    outcomes += self._run_together(many, list(run))
                    continue
                for item in run:
                    if savepoints:
                        conn.execute("SAVEPOINT op")
                    try:
                        outcomes.append((item, op(conn, *item[1]), None))
                    except KSIError as exc:  # a refusal, raised before the op wrote anything
                        outcomes.append((item, None, exc))
                    except Exception as exc:  # noqa: BLE001 - handed to the caller that asked
                        if not savepoints:
                            raise _RetryWithSavepoints() from exc
                        if not conn.in_transaction:
                            # SQLite rolled the whole transaction back itself (it may on a full
                            # disk or an I/O error): nothing of this batch stands, all of it fails.
                            raise
                        conn.execute("ROLLBACK TO op")
                        outcomes.append((item, None, self._coded(exc)))
                    if savepoints:
                        conn.execute("RELEASE op")
            committing = time.perf_counter()
            conn.execute("COMMIT")
            # How long the last COMMIT alone took (its fsync): the group gathers only when
            # commits are slow enough to be worth waiting for (see _gather).
            self._commit_s = time.perf_counter() - committing
        except BaseException:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            if self.after_rollback is not None:
                self.after_rollback()
            raise
        return outcomes

    def _run_together(self, many, run: list):
        """Run writes that share a `Combinable` op in one call of `op.many`; return their
        outcomes.

        `op.many(conn, [args, ...])` does what calling `op` once per write would, in fewer
        statements (the state plugin's plain sets: one upsert for many keys), and returns the
        results in order. A failure there cannot be pinned to one write: the batch runs again
        with savepoints, one op at a time.
        """
        try:
            results = many(self.conn, list(map(_args_of, run)))
        except Exception as exc:  # noqa: BLE001
            raise _RetryWithSavepoints() from exc
        return zip(run, results, repeat(None))


_op_of, _args_of = itemgetter(0), itemgetter(1)  # of a queued write: (op, args, future, ...)


def settle(future, result, exc) -> None:
    """Resolve a write's future (or owed reply) with its outcome, unless its caller gave up."""
    try:  # (no done() call first: a method call per write)
        if exc is None:
            future.set_result(result)
        else:
            future.set_exception(exc)
    except asyncio.InvalidStateError:  # the caller gave up (timeout, cancellation); the write
        pass                            # stands


def run_on_commit(on_commit, result, exc) -> None:
    """Call one write's commit callback; one that fails must not strand the others."""
    try:
        on_commit(result, exc)
    except Exception:  # noqa: BLE001
        log.exception("on_commit_failed")


class _RetryWithSavepoints(Exception):
    """An op failed unexpectedly mid-batch: run the batch again, isolating each op."""


def _never_preempt_the_event_loop() -> None:
    """Make the calling thread SCHED_BATCH (Linux): woken by a submit, it waits for the event
    loop's time slice to end instead of preempting it. It needs the GIL, which the loop holds
    until it waits, so preempting only added two context switches per batch (bench/RESULTS.md,
    "State")."""
    try:
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
    except (AttributeError, OSError):  # not Linux, or not allowed: only slower
        pass
