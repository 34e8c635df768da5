"""Who runs next: per-session order, priorities, and global and per-model concurrency limits.

Each session has its own FIFO; only the head of a session whose previous turn has finished may
start, so turns of one conversation never overlap or reorder, while different sessions run side
by side. Among the startable heads, higher `priority` wins, then arrival order.
"""
from __future__ import annotations

import asyncio
import itertools
from collections import Counter, deque
from typing import Any, Awaitable, Callable


class Job:
    """One completion request on its way through the queue."""

    def __init__(self, request_id: str, session_id: str, model: str, priority: int,
                 payload: Any):
        self.request_id, self.session_id, self.model = request_id, session_id, model
        self.priority, self.payload = priority, payload
        self.seq = 0
        self.state = "queued"
        self.task: asyncio.Task | None = None
        self.done: asyncio.Future = asyncio.get_running_loop().create_future()
        # Called with the outcome once it is committed: the completion:request replies owed.
        self.waiters: list[Callable[[Any], None]] = []
        # Pushes go to the requesting connection (none for a request resumed after a restart)
        # under the request's correlation id, and to subscribers.
        self.connection = None
        self.correlation_id: str | None = None
        self.resumed = False
        self.ending = False  # its outcome is being committed: nothing else may end it
        self.checkpointed = False  # left for the next start at shutdown
        self.ended_at: float | None = None

    @property
    def finished(self) -> bool:
        return self.done.done()


class SessionScheduler:
    def __init__(self, run: Callable[[Job], Awaitable[None]], max_concurrent: int = 16,
                 per_model_limits: dict[str, int] | None = None,
                 default_model_limit: int | None = None):
        self.run = run
        self.max_concurrent = max(1, max_concurrent)
        self.per_model_limits = per_model_limits or {}
        self.default_model_limit = default_model_limit
        self.waiting: dict[str, deque[Job]] = {}
        self.busy_sessions: set[str] = set()
        self.running_per_model: Counter[str] = Counter()
        self.running: set[Job] = set()
        self._counter = itertools.count()

    def submit(self, job: Job) -> None:
        job.seq = next(self._counter)
        self.waiting.setdefault(job.session_id, deque()).append(job)
        self._start_what_fits()

    def withdraw(self, job: Job) -> bool:
        """Take a job that has not started out of the queue; False if it already started."""
        queue = self.waiting.get(job.session_id)
        if job.state != "queued" or not queue or job not in queue:
            return False
        queue.remove(job)
        if not queue:
            del self.waiting[job.session_id]
        return True

    def queued_count(self) -> int:
        return sum(len(q) for q in self.waiting.values())

    def _limit_of(self, model: str) -> int | None:
        return self.per_model_limits.get(model, self.default_model_limit)

    def _startable(self) -> Job | None:
        best = None
        for session_id, queue in self.waiting.items():
            if session_id in self.busy_sessions:
                continue
            head = queue[0]
            limit = self._limit_of(head.model)
            if limit is not None and self.running_per_model[head.model] >= limit:
                continue
            if best is None or (-head.priority, head.seq) < (-best.priority, best.seq):
                best = head
        return best

    def _start_what_fits(self) -> None:
        while len(self.running) < self.max_concurrent:
            job = self._startable()
            if job is None:
                return
            queue = self.waiting[job.session_id]
            queue.popleft()
            if not queue:
                del self.waiting[job.session_id]
            self.busy_sessions.add(job.session_id)
            self.running_per_model[job.model] += 1
            self.running.add(job)
            job.state = "processing"
            job.task = asyncio.get_running_loop().create_task(self.run(job))
            job.task.add_done_callback(lambda _task, job=job: self._finished(job))

    def _finished(self, job: Job) -> None:
        self.running.discard(job)
        self.busy_sessions.discard(job.session_id)
        self.running_per_model[job.model] -= 1
        if self.running_per_model[job.model] <= 0:
            del self.running_per_model[job.model]
        self._start_what_fits()
