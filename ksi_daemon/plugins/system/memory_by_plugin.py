"""Memory by plugin: Python allocations (tracemalloc) attributed to the plugin whose code made
them.

tracemalloc costs while it traces: every allocation records its stack (FRAMES deep), which
slows the daemon down about ten times and takes memory of its own. So it is off unless asked:
`system:metrics {"memory_by_plugin": true, "sample_s": 1}` traces for that long and reports
what was allocated meanwhile and is still held at the end (a picture of what each plugin
allocates while it works, not of everything it ever allocated); `daemon.trace_memory: true`
traces from start-up on, so every reading covers everything allocated since then, at that cost
all the time.

An allocation belongs to the innermost frame of its stack whose file is in a plugin's own code
(its package directory, or its module file); one with no plugin frame in its stack is the
daemon's own (`(daemon)`): the core, libraries called from outside any plugin.
"""
from __future__ import annotations

import asyncio
import os
import sys
import time
import tracemalloc
from types import ModuleType

FRAMES = 25  # deep enough to get from a library's allocation back to the plugin that called it
DAEMON = "(daemon)"


def plugin_roots(records) -> list[tuple[str, str]]:
    """(path prefix, plugin name) for each loaded plugin, longest prefix first: a package's
    directory (with a trailing separator), or a single-file plugin's file."""
    roots = []
    for record in records:
        obj = record.obj
        module = obj if isinstance(obj, ModuleType) else sys.modules.get(type(obj).__module__)
        path = getattr(module, "__file__", None)  # (a module made in memory has none)
        if not path:
            continue
        path = os.path.realpath(path)
        if os.path.basename(path) == "__init__.py":
            path = os.path.dirname(path) + os.sep
        roots.append((path, record.name))
    return sorted(roots, key=lambda root: len(root[0]), reverse=True)


class Attribution:
    """Which plugin a source file belongs to, decided once per file."""

    def __init__(self, roots: list[tuple[str, str]]):
        self.roots = roots
        self.by_file: dict[str, str | None] = {}

    def plugin_of(self, filename: str) -> str | None:
        try:
            return self.by_file[filename]
        except KeyError:
            real = os.path.realpath(filename)
            found = next((name for prefix, name in self.roots
                          if real == prefix or (prefix.endswith(os.sep)
                                                and real.startswith(prefix))), None)
            self.by_file[filename] = found
            return found

    def of_snapshot(self, snapshot: tracemalloc.Snapshot) -> dict[str, dict]:
        """{plugin: {"bytes", "blocks"}} of the allocations the snapshot holds."""
        totals: dict[str, list[int]] = {}
        for stat in snapshot.statistics("traceback"):
            owner = DAEMON
            for frame in reversed(stat.traceback):  # (innermost last)
                plugin = self.plugin_of(frame.filename)
                if plugin is not None:
                    owner = plugin
                    break
            figures = totals.setdefault(owner, [0, 0])
            figures[0] += stat.size
            figures[1] += stat.count
        return {name: {"bytes": size, "blocks": count}
                for name, (size, count) in sorted(totals.items())}


class MemoryByPlugin:
    """The system plugin's reader: a sample on demand, or a reading while tracing always."""

    def __init__(self, roots, trace_always: bool = False):
        self.attribution = Attribution(roots)
        self.trace_always = trace_always
        self.last: dict | None = None  # the latest reading, shown until the next one
        self._one_at_a_time = asyncio.Lock()  # a sample's end must not stop another's tracing
        self._tracing_since_start = trace_always and not tracemalloc.is_tracing()
        if self._tracing_since_start:
            tracemalloc.start(FRAMES)

    def stop(self) -> None:
        """At shutdown: stop the tracing this object started (whoever else traces, goes on)."""
        if self._tracing_since_start:
            tracemalloc.stop()
            self._tracing_since_start = False

    def read_now(self) -> dict:
        """While tracing always: attribute what is held now."""
        return self._keep(tracemalloc.take_snapshot(), "always", None)

    async def sample(self, sample_s: float) -> dict:
        """Trace for `sample_s` (or read now, while tracing always), attribute what is held at
        the end."""
        if self.trace_always:
            return self.read_now()
        async with self._one_at_a_time:
            started_here = not tracemalloc.is_tracing()
            if started_here:
                tracemalloc.start(FRAMES)
            try:
                await asyncio.sleep(sample_s)
                snapshot = tracemalloc.take_snapshot()
            finally:
                if started_here:
                    tracemalloc.stop()
            return self._keep(snapshot, "sample", sample_s)

    def _keep(self, snapshot: tracemalloc.Snapshot, mode: str, sample_s: float | None) -> dict:
        self.last = {"tracing": mode, "sample_s": sample_s, "taken_at": round(time.time(), 3),
                     "traced_bytes": sum(stat.size for stat in snapshot.statistics("filename")),
                     "plugins": self.attribution.of_snapshot(snapshot)}
        return self.last
