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


def _stats_by_plugin(handlers):
    """(plugin name, stats) of each handler with a plugin; a stats object shared by two
    handlers (an internal event's refusal shares its handler's) is given once."""
    seen = set()
    for handler in handlers:
        stats = handler.stats
        if handler.plugin is not None and id(stats) not in seen:
            seen.add(id(stats))
            yield handler.plugin.name, stats


def counts_by_plugin(handlers) -> dict[str, int]:
    """Requests answered per plugin: cheap enough to take every second (no sorting)."""
    counts: dict[str, int] = {}
    for plugin, stats in _stats_by_plugin(handlers):
        counts[plugin] = counts.get(plugin, 0) + stats.count
    return counts


def by_plugin(handlers) -> dict:
    """Per plugin: its handlers' counts and errors added up, percentiles over their timings
    together (each event's last TIMINGS_KEPT, so a rare event weighs more than its share)."""
    merged: dict[str, tuple[list, list]] = {}
    for plugin, stats in _stats_by_plugin(handlers):
        counts, durations = merged.setdefault(plugin, ([0, 0], []))
        counts[0] += stats.count
        counts[1] += stats.errors
        durations.extend(stats.durations)
    return {plugin: {"count": count, "errors": errors, **percentiles_ms(durations)}
            for plugin, ([count, errors], durations) in sorted(merged.items())}
