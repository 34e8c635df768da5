"""Hot reload: a plugin's new code takes over new requests while its old code finishes its own.

The order, each step a way out that leaves the old version running:

    import the file again, under a fresh module name        (fails: the reply says why)
    register its hooks with pluggy, build its handlers      (fails: the same)
    the new instance's ksi_startup                          (fails: its ksi_shutdown, dropped)
    swap: the router's index and the running hooks are the new instance's
    wait for the requests the old instance was answering (at most daemon.shutdown_timeout)
    the old instance: its services cancelled, ksi_stopping, ksi_shutdown, unregistered
    the new instance's ksi_ready (its services)
    announce system:plugin_reloaded {plugin, version, events}

Old and new overlap between the new one's ksi_startup and the old one's ksi_shutdown: a plugin
must tolerate a second instance of itself opening its data dir meanwhile (docs/PLUGINS.md).
Only plugins of `daemon.plugin_dirs` reload. A built-in owns the daemon's databases and socket,
an entry-point plugin is an installed package that `importlib.reload` would change under the
requests still running in it: both refuse, and a restart changes them.
"""
from __future__ import annotations

import asyncio
import itertools
import time
import traceback
from pathlib import Path

import structlog

from .core.protocol import CONFLICT, FORBIDDEN, NOT_FOUND, KSIError
from .plugin_files import entry_of, import_file, source_of
from .plugin_manager import PluginManager, PluginProblem, reason_of, site_of
from .plugin_record import PluginRecord

log = structlog.get_logger("ksi.plugins.reload")
_OWED_POLL_S = 0.005  # owed replies settle by themselves (a commit): looked at this often

REFUSALS = {
    "builtin": "built-in plugins own the daemon's databases and sockets: restart the daemon "
               "to change them",
    "entry_point": "entry-point plugins are installed packages, which cannot be imported a "
                   "second time beside the running one: reinstall and restart the daemon",
}


class PluginReloader:
    """`reload(name)` and `load_new(entry)`, one at a time (a lock), for system:reload and the
    watch mode."""

    def __init__(self, manager: PluginManager, router, drain_timeout_s: float):
        self.manager, self.router, self.drain_timeout_s = manager, router, drain_timeout_s
        self._lock = asyncio.Lock()
        self._names = itertools.count(1)  # pluggy names must be unique: one per version

    async def reload(self, name: str) -> dict:
        """Replace plugin `name` by its code as it is on disk now; raises a coded KSIError
        (the old version still running) when it cannot."""
        old = self.manager.records.get(name)
        if old is None:
            raise KSIError(NOT_FOUND, f"no plugin named {name}; see system:plugins",
                           {"plugins": sorted(self.manager.records)})
        entry = entry_of(old.source)
        if entry is None:
            reason = REFUSALS.get(old.source, f"{old.source} plugins cannot be reloaded")
            raise KSIError(FORBIDDEN, f"plugin {name} is not reloaded: {reason}",
                           {"plugin": name, "source": old.source, "reason": reason})
        async with self._lock:
            return await self._take_over(entry, old)

    async def load_new(self, entry: Path) -> dict:
        """Load a plugin file or package that appeared in a plugin directory."""
        async with self._lock:
            return await self._take_over(entry, None)

    def plugin_at(self, entry: Path) -> str | None:
        """The name of the plugin loaded from `entry` (a file or package), if one was."""
        source = source_of(entry)
        return next((r.name for r in self.manager.records.values() if r.source == source), None)

    async def _take_over(self, entry: Path, old: PluginRecord | None) -> dict:
        started = time.perf_counter()
        new, handlers = await self._started(entry, old)
        self.manager.swap_in(new, handlers, old)
        waited, unfinished = 0, 0
        if old is not None:
            waited, unfinished = await self._requests_finished_on(old)
            await self.manager.stop(old)
            old.state = "replaced"
            self.manager.unregister(old)
            new.reloads = old.reloads + 1
        await self.manager.ready(new)
        new.load_ms = (time.perf_counter() - started) * 1000
        result = {"plugin": new.name, "version": new.version, "events": new.events,
                  "previous_version": old.version if old else None,
                  "added": sorted(set(new.events) - set(old.events if old else ())),
                  "removed": sorted(set(old.events) - set(new.events)) if old else [],
                  "waited_for": waited, "unfinished": unfinished}
        log.info("plugin_reloaded" if old else "plugin_loaded", **result)
        self.router.announce("system:plugin_reloaded", {
            "plugin": new.name, "version": new.version, "events": new.events},
            source="plugin_manager")
        return result

    async def _started(self, entry: Path, old: PluginRecord | None) -> tuple[PluginRecord, list]:
        """The new version, imported, registered and started, with its handlers (not yet in
        the index);
        any failure leaves nothing of it behind and raises `conflict` saying why."""
        name = old.name if old is not None else entry.stem
        manager, new, stage = self.manager, None, "import"
        try:
            new = manager.imported(name, source_of(entry),
                                   lambda: import_file(entry, fresh=True))
            self._check_identity(new, old)
            stage = "register"
            manager.register(new, f"{new.name}#{next(self._names)}")
            manager.hooks_changed()  # its lifecycle hooks are found (not yet the running ones)
            stage = "handlers"
            handlers = manager.handlers_for(new, replacing=old)
            stage = "startup"
            await manager.start(new)
        except Exception as exc:  # noqa: BLE001 - whatever the new code does, the old runs on
            reason = str(exc) if isinstance(exc, PluginProblem) else reason_of(exc)
            where = site_of(exc)
            if old is not None:
                old.reload_error = f"{stage} failed: {reason}"
            log.error("plugin_reload_failed", plugin=name, stage=stage, error=reason,
                      where=where, traceback=traceback.format_exc())
            if new is not None:
                await self._discard(new)
            kept = f"; version {old.version} keeps running" if old is not None else ""
            raise KSIError(CONFLICT, f"plugin {name} was not reloaded: {stage} failed: "
                           f"{reason}{kept}", {"plugin": name, "stage": stage, "error": reason,
                                               "where": where}) from None
        if old is not None:
            old.reload_error = None
        return new, handlers

    def _check_identity(self, new: PluginRecord, old: PluginRecord | None) -> None:
        if old is not None and new.name != old.name:
            raise PluginProblem(f"the new version is named {new.name}, not {old.name}: "
                                "restart the daemon to rename a plugin")
        if old is None and new.name in self.manager.records:
            raise PluginProblem(f"a plugin named {new.name} is already loaded from "
                                f"{self.manager.records[new.name].source}")
        for dependency in new.metadata.dependencies:
            holder = self.manager.records.get(dependency)
            if holder is None or holder.state != "active":
                raise PluginProblem(f"dependency {dependency} is "
                                    f"{holder.state if holder else 'missing'}")

    async def _discard(self, new: PluginRecord) -> None:
        """A new version that did not make it: what its ksi_startup opened is released."""
        if new.started:
            await self.manager.stop(new)
        self.manager.unregister(new)

    async def _requests_finished_on(self, old: PluginRecord) -> tuple[int, int]:
        """Wait for the requests `old` was answering at the swap, at most the drain timeout:
        (how many there were, how many still run on it past the timeout: they finish there,
        after its ksi_shutdown)."""
        answers_fallbacks = bool(self.manager.hooks.of(old, "ksi_handle_event"))
        tasks, owed = self.router.running_on(old, unattributed=answers_fallbacks)
        tasks = [t for t in tasks if t is not asyncio.current_task()]
        total, until = len(tasks) + len(owed), time.perf_counter() + self.drain_timeout_s
        if tasks:
            await asyncio.wait(tasks, timeout=self.drain_timeout_s)
        while any(not reply.done() for reply in owed) and time.perf_counter() < until:
            await asyncio.sleep(_OWED_POLL_S)
        unfinished = sum(not t.done() for t in tasks) + sum(not r.done() for r in owed)
        if unfinished:
            log.warning("replaced_plugin_requests_unfinished", plugin=old.name,
                        requests=unfinished, timeout_s=self.drain_timeout_s)
        return total, unfinished
