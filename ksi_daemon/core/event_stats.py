"""Per-event counts and timings, kept by the router and reported by `system:metrics`."""
from __future__ import annotations

import time
from collections import deque

TIMINGS_KEPT = 2048  # per event: enough for stable p99, small enough to sort on demand
_perf = time.perf_counter


class EventStats:
    __slots__ = ("count", "errors", "durations")

    def __init__(self):
        self.count = 0
        self.errors = 0
        self.durations: deque[float] = deque(maxlen=TIMINGS_KEPT)

    def record(self, started: float, ok: bool) -> None:
        self.count += 1
        if not ok:
            self.errors += 1
        self.durations.append(_perf() - started)


def percentiles_ms(durations) -> dict:
    ordered = sorted(durations)
    if not ordered:
        return {"p50_ms": None, "p95_ms": None, "p99_ms": None}
    last = len(ordered) - 1
    return {f"p{q}_ms": round(ordered[min(last, int(q / 100 * len(ordered)))] * 1000, 4)
            for q in (50, 95, 99)}
