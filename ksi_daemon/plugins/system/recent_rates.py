"""Events per second over the last few seconds, per plugin and for the whole daemon.

Prometheus computes rates from the counters itself (`rate(ksi_events_total[1m])`); this is the
daemon's own figure, for `system:metrics` and the terminal table, which have no history to
subtract. Once a second the totals are sampled (a sum over the handlers' counters, no sorting);
a rate is the change since the oldest sample kept, over the time between them.
"""
from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Callable

from ...core.event_stats import counts_by_plugin

ALL = "(all)"  # the whole daemon's total among the per-plugin ones
WINDOW_S = 10
_monotonic = time.monotonic


def event_totals(router) -> dict[str, int]:
    """Requests answered so far, per plugin and in all (pushes and refusals included)."""
    totals = counts_by_plugin(router.handlers.values())
    totals[ALL] = sum(totals.values()) + sum(s.count for s in router.other_stats.values())
    return totals


class RecentRates:
    def __init__(self, totals: Callable[[], dict[str, int]], window_s: int = WINDOW_S,
                 every_s: float = 1.0):
        self.totals, self.every_s = totals, every_s
        self.samples: deque[tuple[float, dict[str, int]]] = deque(maxlen=window_s + 1)

    async def sample_forever(self) -> None:
        """A supervised service of the system plugin: one sample a second."""
        while True:
            self.take()
            await asyncio.sleep(self.every_s)

    def take(self) -> None:
        self.samples.append((_monotonic(), self.totals()))

    def rates(self) -> dict[str, float | None]:
        """Events/s per plugin (and ALL) since the oldest sample; None before the first one."""
        now, totals = _monotonic(), self.totals()
        if not self.samples:
            return {name: None for name in totals}
        then, before = self.samples[0]
        elapsed = now - then
        if elapsed <= 0:
            return {name: None for name in totals}
        return {name: round((count - before.get(name, 0)) / elapsed, 3)
                for name, count in totals.items()}
