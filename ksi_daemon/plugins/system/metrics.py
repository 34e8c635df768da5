"""What `system:metrics` reports, read at the moment it is asked (or Prometheus scrapes).

The router keeps counts and timings per event as it answers (core/event_stats.py); everything
else here is computed from them on demand: per-plugin sums and percentiles, the recent rates,
the plugins' queue depths (the `ksi_queue_depths` hook), memory by plugin (tracemalloc, only
when asked or configured), the process's resident memory and the loop stalls.
"""
from __future__ import annotations

import os
import time

import structlog

from .memory_by_plugin import MemoryByPlugin, plugin_roots
from .recent_rates import ALL, RecentRates, event_totals

log = structlog.get_logger("ksi.metrics")
_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
_now = time.time


class DaemonMetrics:
    def __init__(self, router, manager, daemon, queue_depths_hook, trace_memory: bool = False):
        self.router, self.manager, self.daemon = router, manager, daemon
        self.queue_depths_hook = queue_depths_hook
        self.rates = RecentRates(lambda: event_totals(router))
        self.trace_memory = trace_memory
        self.memory: MemoryByPlugin | None = None
        if trace_memory:
            self.memory = MemoryByPlugin([], trace_always=True)
        self.http_address: str | None = None  # where /metrics is served, once it is

    def read(self) -> dict:
        """One reading, now (memory by plugin: the last sample's, or a fresh one while tracing
        always). Synchronous: the request asking for it is not yet in flight while it reads."""
        if self.trace_memory:
            self._memory_reader().read_now()
        figures = self.router.metrics()  # events, plugins, connections, queues
        rates, depths = self.rates.rates(), self.queue_depths()
        figures["events_per_s"] = rates.get(ALL)
        for name, plugin in figures["plugins"].items():
            plugin["events_per_s"] = rates.get(name)
            plugin["queues"] = depths.pop(name, {})
        for name, queues in depths.items():  # plugins with queues and no event handlers
            figures["plugins"][name] = {"count": 0, "errors": 0, "p50_ms": None,
                                        "p95_ms": None, "p99_ms": None, "events_per_s": None,
                                        "queues": queues}
        figures["uptime_s"] = round(_now() - self.daemon.started_at, 3)
        figures["rss_bytes"] = resident_memory()
        figures["loop_stalls"] = self.daemon.loop_watch.figures()
        figures["metrics_http"] = self.http_address
        if self.memory is not None and self.memory.last is not None:
            figures["memory_by_plugin"] = self.memory.last
        return figures

    def stop(self) -> None:
        if self.memory is not None:
            self.memory.stop()

    async def read_after_memory_sample(self, sample_s: float) -> dict:
        """Trace allocations for `sample_s` (memory by plugin), then read."""
        await self._memory_reader().sample(sample_s)
        return self.read()

    def _memory_reader(self) -> MemoryByPlugin:
        if self.memory is None:
            self.memory = MemoryByPlugin([])
        # The plugins loaded now (a plugin's directory is known once it is imported).
        self.memory.attribution.roots = plugin_roots(self.manager.order)
        return self.memory

    def queue_depths(self) -> dict[str, dict[str, int]]:
        """Each plugin's answer to `ksi_queue_depths`; one that raises is logged and left out."""
        depths = {}
        for impl in self.queue_depths_hook.impls:
            try:
                answer = impl.call()
                depths[impl.plugin.name] = {str(queue): value for queue, value in answer.items()
                                            if isinstance(value, int)}
            except Exception as exc:  # noqa: BLE001 - one plugin's bug costs only its figures
                log.warning("queue_depths_failed", plugin=impl.plugin.name, error=repr(exc))
        return depths


def resident_memory() -> int:
    with open("/proc/self/statm", "rb") as statm:
        return int(statm.read().split()[1]) * _PAGE_SIZE
