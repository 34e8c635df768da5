"""Wake-ups: schedules that put a prompt in an agent's inbox every `every_s` seconds or on a cron.

One task (Scheduler.run) sleeps until the earliest firing and hands each due schedule to the
plugin's `fire`, which stores the firing and its next time together (store.fire_schedule). The
next firing is always counted from now, never from the missed time, so firings missed while the
daemon was down, or while the event loop was busy, become one firing, not a burst.
"""
from __future__ import annotations

import asyncio
import time
from datetime import datetime, timezone
from typing import Awaitable, Callable

import structlog
from cronsim import CronSim, CronSimError

log = structlog.get_logger("ksi.plugin.agent")
EVERY_S_MIN, EVERY_S_MAX = 1.0, 31 * 24 * 3600.0


def cron_problem(expression: str) -> str | None:
    """Why a 5-field cron expression is not valid, or None if it is."""
    if len(expression.split()) != 5:
        return "a cron expression has 5 fields: minute hour day-of-month month day-of-week"
    try:
        CronSim(expression, datetime.now(timezone.utc))
    except CronSimError as exc:
        return str(exc)
    return None


class Schedule:
    __slots__ = ("schedule_id", "agent_id", "every_s", "cron", "prompt", "created_at",
                 "next_at", "last_message_id", "fired", "coalesced")

    def __init__(self, schedule_id: str, agent_id: str, every_s: float | None, cron: str | None,
                 prompt: str, created_at: float, next_at: float | None = None,
                 last_message_id: str | None = None, fired: int = 0, coalesced: int = 0):
        self.schedule_id, self.agent_id, self.prompt = schedule_id, agent_id, prompt
        self.every_s, self.cron, self.created_at = every_s, cron, created_at
        self.next_at = next_at if next_at is not None else self.next_after(created_at)
        self.last_message_id, self.fired, self.coalesced = last_message_id, fired, coalesced

    @property
    def sender(self) -> str:
        return f"schedule:{self.schedule_id}"

    def next_after(self, moment: float) -> float:
        if self.every_s is not None:
            return moment + self.every_s
        # Cron times are UTC, so a schedule means the same on every machine of a cluster.
        start = datetime.fromtimestamp(moment, timezone.utc)
        return next(iter(CronSim(self.cron, start))).timestamp()

    def missed_before(self, now: float, limit: int = 1000) -> int:
        """Firings due after the next one and by `now` (missed while the daemon was down)."""
        if self.every_s is not None:
            return max(0, min(limit, int((now - self.next_at) // self.every_s)))
        missed, moment = 0, self.next_at
        while missed < limit and (moment := self.next_after(moment)) <= now:
            missed += 1
        return missed

    def row(self) -> dict:
        return {"schedule_id": self.schedule_id, "agent_id": self.agent_id,
                "every_s": self.every_s, "cron": self.cron, "prompt": self.prompt,
                "created_at": self.created_at, "next_at": self.next_at,
                "last_message_id": self.last_message_id, "fired": self.fired,
                "coalesced": self.coalesced}

    def record(self) -> dict:
        return {k: v for k, v in self.row().items() if k != "last_message_id"}


class Scheduler:
    """The schedules in memory and the one task that fires them when they are due."""

    def __init__(self, fire: Callable[[Schedule, float], Awaitable[None]]):
        self.fire = fire
        self.schedules: dict[str, Schedule] = {}
        self._changed = asyncio.Event()

    def add(self, schedule: Schedule) -> None:
        self.schedules[schedule.schedule_id] = schedule
        self._changed.set()

    def remove(self, schedule_id: str) -> Schedule | None:
        return self.schedules.pop(schedule_id, None)

    def of_agent(self, agent_id: str) -> list[Schedule]:
        return [s for s in self.schedules.values() if s.agent_id == agent_id]

    async def run(self) -> None:
        while True:
            now = time.time()
            due = [s for s in self.schedules.values() if s.next_at <= now]
            for schedule in due:
                if self.schedules.get(schedule.schedule_id) is schedule:
                    try:
                        await self.fire(schedule, now)
                    except Exception as exc:  # noqa: BLE001 - one bad firing stops no other
                        log.error("agent_schedule_failed", schedule_id=schedule.schedule_id,
                                  error=repr(exc))
                        schedule.next_at = schedule.next_after(now)
            if due:
                continue
            earliest = min((s.next_at for s in self.schedules.values()), default=None)
            self._changed.clear()
            try:
                async with asyncio.timeout(None if earliest is None else earliest - now):
                    await self._changed.wait()
            except TimeoutError:
                pass
