"""Plugin discovery, ordering, failure isolation and status.

Plugins come from three places only: the built-ins, the `ksi.plugins` entry-point group, and the
configured plugin directories. Order is deterministic: declared dependencies (topologically), then
priority, then name; every hook is called in that order through one runner (`core/hooks.py`).
A plugin that fails to import, register, start, serve or stop is marked `failed` with the
reason; the daemon keeps running and the plugin's events answer `unavailable` (for a plugin that
could not even be imported: every unanswered name in the namespaces it claimed, see
`_claimed_namespaces`).
"""
from __future__ import annotations

import asyncio
import heapq
import importlib
import importlib.metadata
import inspect
import os
import sys
import sysconfig
import time
import traceback
import typing
from pathlib import Path

import pluggy
import structlog

from . import hookspecs
from .event_system import handler_specs, is_schema, pydantic_ready
from .plugin_record import PluginRecord
from .plugin_files import import_file, plugin_entries, source_of, trusted_dirs
from .plugin_context import Internals, PluginContext
from .plugin_types import PluginCapabilities, PluginMetadata
from .plugin_base import BasePlugin
from .core.hooks import HookRunner
from .core.protocol import FORBIDDEN, KSIError
from .core.router import Handler, Router

ENTRY_POINT_GROUP = "ksi.plugins"
# Used when the package is run from a source tree without being installed (no entry points).
BUILTIN_PLUGIN_DIR = Path(__file__).resolve().parent / "plugins"
BUILTIN_PLUGINS = {
    "system": "ksi_daemon.plugins.system",
    "transport_unix": "ksi_daemon.plugins.transport_unix",
    "state": "ksi_daemon.plugins.state",
    "conversation": "ksi_daemon.plugins.conversation",
    "completion": "ksi_daemon.plugins.completion",
    "message": "ksi_daemon.plugins.message",
    "agent": "ksi_daemon.plugins.agent",
    "orchestration": "ksi_daemon.plugins.orchestration",
    "tools": "ksi_daemon.plugins.tools",
    "mcp": "ksi_daemon.plugins.mcp",
}
# Built-in plugins that exist only when their setting is on (with it off the daemon is as if
# they had never been written: no events, no status line).
OPTIONAL_BUILTINS = {
    "cluster": ("ksi_daemon.plugins.cluster", lambda config: bool(config["cluster"]["nats_url"])),
    "compat": ("ksi_daemon.plugins.compat",
               lambda config: config["transports"]["unix"]["compatibility_mode"]),
}
log = structlog.get_logger("ksi.plugins")


class PluginManager:
    def __init__(self, config: dict, router: Router, daemon=None):
        self.config, self.router, self.daemon = config, router, daemon
        self.pm = pluggy.PluginManager("ksi")
        self.pm.add_hookspecs(hookspecs)
        self.records: dict[str, PluginRecord] = {}
        self.order: list[PluginRecord] = []
        self.hooks = HookRunner(self.pm, lambda: self.order)
        self.services: list[asyncio.Task] = []
        self.var_dir = Path(config["daemon"]["var_dir"])
        self._counts: dict | None = None
        self.degraded: dict[str, str] = {}  # plugin name -> what fails (report_degraded)

    # ---- loading ------------------------------------------------------------------------------

    def load_all(self) -> None:
        for name, source, importer in self._discover():
            self._load(name, source, importer)
        # Every plugin's own hookspecs before any implementation is registered, so pluggy
        # checks each implementation against its spec, whichever plugin declares it.
        for record in self.records.values():
            self._add_hookspecs(record)
        for record in self.records.values():
            self._register(record)
        self.order = self._ordered()
        for record in self.order:
            if record.state == "loading":
                self._index(record)
        self.hooks_changed()

    def _discover(self):
        found: dict[str, str] = {}
        try:
            for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
                found.setdefault(ep.name, ep.value)
        except Exception as exc:  # noqa: BLE001 - a broken distribution must not stop the daemon
            log.warning("entry_points_unreadable", error=str(exc))
        for name, module in BUILTIN_PLUGINS.items():
            found.setdefault(name, module)
        builtins = set(BUILTIN_PLUGINS.values())
        for name, (module, wanted) in OPTIONAL_BUILTINS.items():
            if wanted(self.config):
                found.setdefault(name, module)
                builtins.add(module)
        for name, target in found.items():
            kind = "builtin" if target in builtins else "entry_point"
            yield name, kind, lambda target=target: _import_target(target)
        refused = []
        for path in trusted_dirs(self.config["daemon"]["plugin_dirs"], BUILTIN_PLUGIN_DIR,
                                 lambda path, problem: refused.append((path, problem))):
            for entry in plugin_entries(path):
                yield entry.stem, source_of(entry), lambda entry=entry: import_file(entry)
        for path, problem in refused:  # shown as a failed plugin, with the reason
            yield f"plugin_dir {path}", source_of(path), lambda problem=problem: _refuse(problem)

    def imported(self, name: str, source: str, importer) -> PluginRecord:
        """A record of the plugin `importer()` imports, with its metadata and config section
        (raises what the import raised)."""
        record = PluginRecord(name, source)
        obj = _plugin_object(importer())
        record.obj = obj
        record.metadata = _metadata_of(obj, name)
        record.name = record.metadata.name
        record.version = record.metadata.version
        record.description = record.metadata.description
        record.capabilities = getattr(obj, "capabilities", None) or PluginCapabilities()
        record.config = self._section_of(record.name)
        return record

    def _section_of(self, name: str) -> dict:
        section = self.config.get("plugins", {}).get(name, {})
        return section if isinstance(section, dict) else {}

    def _load(self, name: str, source: str, importer) -> None:
        started = time.perf_counter()
        try:
            record = self.imported(name, source, importer)
        except Exception as exc:  # noqa: BLE001
            record = PluginRecord(name, source)
            record.config = self._section_of(name)  # its event_namespaces: _claim_namespaces
            record.state, record.error = "failed", f"import failed: {reason_of(exc)}"
            record.where = site_of(exc)
            log.error("plugin_import_failed", plugin=name, error=record.error,
                      traceback=traceback.format_exc())
        if record.name in self.records:
            record.state = "failed"
            record.error = (f"a plugin named {record.name} is already loaded from "
                            f"{self.records[record.name].source}")
            record.name = f"{record.name}@{source}"
        self.records[record.name] = record
        if record.state == "loading" and record.config.get("enabled", True) is False:
            record.state = "disabled"
        if record.state == "failed":
            self._claim_namespaces(record)
        record.load_ms = (time.perf_counter() - started) * 1000

    def _add_hookspecs(self, record: PluginRecord) -> None:
        """The hooks a plugin declares for others (`PluginMetadata.hookspecs`)."""
        if record.state != "loading":
            return
        for specs in record.metadata.hookspecs:
            try:
                self.pm.add_hookspecs(specs)
            except Exception as exc:  # noqa: BLE001 - a spec clashing with another one
                self._fail(record, f"hookspecs rejected: {reason_of(exc)}")
                return

    def _register(self, record: PluginRecord) -> None:
        if record.state != "loading":
            return
        started = time.perf_counter()
        try:
            self.register(record, record.name)
        except Exception as exc:  # noqa: BLE001 - pluggy rejects ill-formed hooks here
            self._fail(record, f"hook validation failed: {reason_of(exc)}")
        record.load_ms += (time.perf_counter() - started) * 1000

    def register(self, record: PluginRecord, as_name: str) -> None:
        """Register its hooks with pluggy (which checks them), under a name unique in it."""
        self.pm.register(record.obj, name=as_name)
        record.hooks = sorted(h.name for h in self.pm.get_hookcallers(record.obj) or ())

    def unregister(self, record: PluginRecord) -> None:
        """Its hooks are no longer called, nor found for it (a replaced version)."""
        if record.obj is not None and self.pm.is_registered(record.obj):
            self.pm.unregister(record.obj)
        self.hooks_changed()

    def _ordered(self) -> list[PluginRecord]:
        """Dependencies first, then priority, then name; cycles and missing names fail."""
        candidates = {n: r for n, r in self.records.items() if r.state == "loading"}
        for record in candidates.values():
            for dependency in record.metadata.dependencies:
                if record.state != "loading":
                    break
                if dependency not in self.records:
                    self._fail(record, f"missing dependency: {dependency}")
                elif self.records[dependency].state in ("failed", "disabled"):
                    self._fail(record, f"dependency {dependency} is "
                               f"{self.records[dependency].state}")
        pending = {n: set(r.metadata.dependencies) for n, r in candidates.items()
                   if r.state == "loading"}
        key = lambda name: (self.records[name].metadata.priority, name)  # noqa: E731
        ready = [key(n) for n, deps in pending.items() if not deps & pending.keys()]
        heapq.heapify(ready)
        order, placed = [], set()
        while ready:
            _, name = heapq.heappop(ready)
            placed.add(name)
            order.append(self.records[name])
            for other, deps in pending.items():
                if other not in placed and name in deps and (deps & pending.keys()) <= placed \
                        and key(other) not in ready:
                    heapq.heappush(ready, key(other))
        for name in sorted(pending.keys() - placed):
            self._fail(self.records[name], _cycle_reason(name, pending, placed))
        rest = sorted((r for r in self.records.values() if r not in order),
                      key=lambda r: (r.metadata.priority, r.name))
        return order + rest

    def _index(self, record: PluginRecord) -> None:
        """Put the plugin's handlers into the router's index (its hooks reach the router
        through `hooks_changed`)."""
        try:
            self.index(record, self.handlers_for(record))
        except PluginProblem as problem:
            self._fail(record, str(problem))

    def handlers_for(self, record: PluginRecord, replacing: PluginRecord | None = None) -> list:
        """The plugin's handlers as (for plugins, for clients) pairs, not yet in the index;
        raises PluginProblem for an event another plugin answers (but `replacing`, the version
        it replaces) without override=True, or a schema pydantic cannot build."""
        claimed = []
        for func, spec in _declared_handlers(record.obj):
            for event in (spec.event, *spec.aliases):
                holder = self.router.handlers.get(event)
                if holder is not None and holder.plugin not in (record, replacing) \
                        and not spec.override:
                    raise PluginProblem(f"event {event} is already handled by plugin "
                                        f"{holder.plugin.name}; declare override=True to take "
                                        "it over")
                try:
                    handler = _handler_of(event, func, spec, record)
                except Exception as exc:  # noqa: BLE001 - a schema pydantic cannot build
                    raise PluginProblem(f"the schema of {event} is not usable: "
                                        f"{reason_of(exc)}") from exc
                claimed.append((handler, _refusing_clients(handler, self.router.report_refusal)
                                if spec.internal else None))
        return claimed

    def index(self, record: PluginRecord, handlers: list) -> None:
        """Put `handlers_for(record)` into the router's index: requests find them now."""
        for handler, for_clients in handlers:
            self.router.add_handler(handler, for_clients)
        record.events = sorted({h.event for h, _ in handlers} | set(record.capabilities.commands))

    def hooks_changed(self) -> None:
        """The set of running plugins changed: recompute every hook's implementations once, and
        give the router its fallback and middleware lists from them."""
        self.hooks.rebuild()
        router = self.router
        router.fallbacks[:] = self.hooks.hook("ksi_handle_event").impls
        router.pre_hooks[:] = self.hooks.hook("ksi_pre_event").impls
        router.post_hooks[:] = self.hooks.hook("ksi_post_event").impls
        router.refusal_hooks[:] = self.hooks.hook("ksi_request_refused").impls
        router.seal()

    def _fail(self, record: PluginRecord, reason: str) -> None:
        record.state, record.error = "failed", reason
        record.where = record.where or site_of(sys.exception())  # None outside an except
        self._counts = None
        log.error("plugin_failed", plugin=record.name, error=reason)
        message = f"plugin {record.name} failed: {reason}"
        for handler in self.router.handlers.values():
            if handler.plugin is record:
                handler.disable(message)
        self._claim_namespaces(record)
        self.hooks_changed()
        self._announce_failure(record)
        for dependent in self.records.values():
            if record.name in dependent.metadata.dependencies and dependent.state != "failed":
                self._fail(dependent, f"dependency {record.name} failed")

    def _announce_failure(self, record: PluginRecord) -> None:
        """A plugin failing while the daemon runs is told to subscribers (`system:plugin_failed`):
        an MCP host's tool list, a monitor. At start nobody could be listening yet."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return
        self.router.announce("system:plugin_failed", {
            "plugin": record.name, "error": record.error, "where": record.where},
            source="plugin_manager")

    def _claim_namespaces(self, record: PluginRecord) -> None:
        """Names nobody answers in a failed plugin's namespaces answer `unavailable`.

        A plugin that could not be imported never told the daemon its event names, so the
        daemon goes by what it knows: the plugin's name (its file, package or entry-point name),
        the `event_namespaces` of its capabilities, and `plugins.<name>.event_namespaces` in the
        config. Names a running plugin answers are not affected: only the `unknown_event`
        answer is replaced.
        """
        if "@" in record.name:  # a second plugin of the same name: the name is the other's
            return
        message = f"plugin {record.name} failed: {record.error}"
        for namespace in _namespaces_of(record):
            self.router.failed_namespaces[namespace] = message

    def swap_in(self, new: PluginRecord, handlers: list, old: PluginRecord | None) -> None:
        """`new` (started) answers from now on, in `old`'s place in the plugin order (or
        last): its handlers in the index, `old`'s events it lacks gone (`unknown_event`), its
        hooks the running ones. `old` stays registered for its `ksi_shutdown` (`unregister`)."""
        if old is not None:
            kept = {handler.event for handler, _ in handlers}
            for event in old.events:
                holder = self.router.handlers.get(event)
                if event not in kept and holder is not None and holder.plugin is old:
                    self.router.remove_handler(event)
            for namespace in _namespaces_of(old):  # it failed once: its names answer again
                self.router.failed_namespaces.pop(namespace, None)
            self.order[self.order.index(old)] = new
            self.degraded.pop(old.name, None)
        else:
            self.order.append(new)
        self.records[new.name] = new
        self.index(new, handlers)
        self._counts = None
        self.hooks_changed()

    # ---- lifecycle ---------------------------------------------------------------------------

    async def start_all(self) -> None:
        for record in self.order:
            if record.state != "loading":
                continue
            try:
                await self.start(record)
            except PluginProblem as problem:
                self._fail(record, str(problem))
            except Exception as exc:  # noqa: BLE001
                self._fail(record, f"startup failed: {reason_of(exc)}")
        await self._install_client_adapters()

    async def _install_client_adapters(self) -> None:
        """The `ksi_client_adapters` of running plugins, installed once (hookspecs.py)."""
        hook = self.hooks.hook("ksi_client_adapters")
        for impl in hook.impls:
            record = impl.plugin
            try:
                adapters = await impl.run(context=record.context) or {}
            except Exception as exc:  # noqa: BLE001
                self._fail(record, f"ksi_client_adapters failed: {reason_of(exc)}")
                continue
            for event, adapter in adapters.items():
                if not self.router.adapt_for_clients(event, adapter):
                    log.warning("adapter_without_handler", plugin=record.name, event_name=event)

    async def start(self, record: PluginRecord) -> None:
        """Give it its context and data dir and run its `ksi_startup`: `active` after it,
        else raises (it is `started` either way, so its `ksi_shutdown` releases what it
        opened before failing)."""
        record.data_dir = self.var_dir / "plugins" / record.name
        if record.capabilities.internals and record.source != "builtin":
            raise PluginProblem("only built-in plugins may have the daemon's internals "
                                "(PluginCapabilities(internals=True))")
        record.context = self._context_of(record)
        if isinstance(record.obj, BasePlugin):
            record.obj.context, record.obj.config = record.context, record.config
            record.obj.data_dir = record.data_dir
        record.started = True
        record.data_dir.mkdir(parents=True, exist_ok=True)
        await self._call(record, "ksi_startup", config=self.config)
        record.state = "active"
        self._counts = None

    def _context_of(self, record: PluginRecord) -> PluginContext:
        internals = Internals(self.router, self, self.daemon) \
            if record.capabilities.internals else None
        return PluginContext(
            record, self.router, self.hooks,
            lambda: getattr(self.daemon, "shutdown_deadline", None), internals,
            structlog.get_logger(f"ksi.plugin.{record.name}").bind(plugin=record.name),
            self.note_degraded)

    async def ready_all(self) -> None:
        for record in self.active():
            await self.ready(record)

    async def ready(self, record: PluginRecord) -> None:
        """Its `ksi_ready`, and the services it returns supervised; failing fails it."""
        try:
            for impl in self.hooks.of(record, "ksi_ready"):
                result = impl.call(context=record.context)
                if inspect.iscoroutinefunction(impl.function):
                    result = await result  # `async def ksi_ready` returns its services
                # a plain `def ksi_ready` returning a coroutine hands over a service
                for coro in (result if isinstance(result, (list, tuple)) else [result]):
                    if coro is not None:
                        self._supervise(record, coro)
        except Exception as exc:  # noqa: BLE001
            self._fail(record, f"ready failed: {reason_of(exc)}")

    async def stopping_all(self) -> None:
        for record in reversed(self.active()):
            try:
                await self._call(record, "ksi_stopping")
            except Exception as exc:  # noqa: BLE001
                self._fail(record, f"stopping failed: {reason_of(exc)}")

    async def shutdown_all(self) -> None:
        for task in self.services:
            task.cancel()
        if self.services:
            await asyncio.wait(self.services, timeout=5.0)
        for record in reversed(self.order):
            if not record.started:
                continue
            try:
                await self._call(record, "ksi_shutdown")
            except Exception as exc:  # noqa: BLE001
                record.state, record.error = "failed", f"shutdown failed: {reason_of(exc)}"
                self._counts = None
                log.error("plugin_shutdown_failed", plugin=record.name, error=record.error)

    async def stop(self, record: PluginRecord) -> None:
        """One plugin's end while the daemon runs on (a replaced version): its services
        cancelled, then its `ksi_stopping` and `ksi_shutdown`; failures are logged, since the
        version that replaces it is the one that runs."""
        for task in record.services:
            task.cancel()
        if record.services:
            await asyncio.wait(record.services, timeout=5.0)
            self.services = [task for task in self.services if task not in record.services]
        for hook in ("ksi_stopping", "ksi_shutdown") if record.state == "active" \
                else ("ksi_shutdown",) if record.started else ():
            try:
                await self._call(record, hook)
            except Exception as exc:  # noqa: BLE001
                log.error("replaced_plugin_stop_failed", plugin=record.name, hook=hook,
                          error=reason_of(exc))

    async def _call(self, record: PluginRecord, hook_name: str, **kwargs) -> list:
        """One plugin's lifecycle hook; raising is the caller's to turn into the plugin's
        failure (the lifecycle's error policy), so the other plugins are still called."""
        return [await impl.run(context=record.context, **kwargs)
                for impl in self.hooks.of(record, hook_name)]

    def _supervise(self, record: PluginRecord, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=f"{record.name}-service")
        self.services.append(task)
        record.services.append(task)

        def on_done(task: asyncio.Task) -> None:
            # (a replaced version's service ending is no failure of the one running now)
            if not task.cancelled() and task.exception() is not None and record in self.order:
                self._fail(record, f"service crashed: {reason_of(task.exception())}")
        task.add_done_callback(on_done)

    # ---- status ------------------------------------------------------------------------------

    def active(self) -> list[PluginRecord]:
        return [r for r in self.order if r.state == "active"]

    def active_services(self, service: str) -> list[PluginRecord]:
        return [r for r in self.active() if service in r.capabilities.provides_services]

    def status(self) -> list[dict]:
        return [r.as_status() for r in self.order]

    def note_degraded(self, record: PluginRecord) -> None:
        if record.degraded is None:
            self.degraded.pop(record.name, None)
        else:
            self.degraded[record.name] = record.degraded
        self._counts = None

    def counts(self) -> dict:
        """Plugins by state. The same dict until a state changes: read it, never change it.
        (system:health asks on every call and states change rarely: no count, and no copy,
        per call.)"""
        if self._counts is None:
            self._counts = {"active": sum(r.state == "active" for r in self.order),
                            "failed": sum(r.state == "failed" for r in self.order),
                            "degraded": len(self.degraded)}
        return self._counts


def _import_target(target: str):
    module_name, _, attr = target.partition(":")
    module = importlib.import_module(module_name)
    return getattr(module, attr) if attr else module


def _namespaces_of(record: PluginRecord) -> set[str]:
    """The namespaces a plugin claims: its name, its capabilities', its config's."""
    names = {record.name, *record.capabilities.event_namespaces,
             *(record.config.get("event_namespaces") or ())}
    return {n.strip("/") for n in names if isinstance(n, str) and n.strip("/")}


def _refuse(problem: str):
    raise PermissionError(problem)


class PluginProblem(Exception):
    """Why a plugin cannot be started or indexed, worded for its status and a reply."""


def _plugin_object(module):
    """`ksi_plugin` (a class is instantiated) if the module names one, else the module itself."""
    obj = getattr(module, "ksi_plugin", None)
    if obj is None:
        return module
    return obj() if inspect.isclass(obj) else obj


def _metadata_of(obj, default_name: str) -> PluginMetadata:
    metadata = getattr(obj, "metadata", None) or getattr(obj, "PLUGIN_METADATA", None)
    if isinstance(metadata, PluginMetadata):
        return metadata
    if isinstance(metadata, dict):
        return PluginMetadata(**{"name": default_name, **metadata})
    return PluginMetadata(name=default_name, version=getattr(obj, "__version__", "0.0.0"))


def _declared_handlers(obj):
    seen = set()
    for attr in dir(obj):
        try:
            value = getattr(obj, attr)
        except Exception:  # noqa: BLE001 - a property that raises is not a handler
            continue
        specs = handler_specs(value)
        if specs and callable(value) and getattr(value, "__func__", value) not in seen:
            seen.add(getattr(value, "__func__", value))
            for spec in specs:
                yield value, spec


def _handler_of(event: str, func, spec, record: PluginRecord) -> Handler:
    return Handler(event, func, record, model=pydantic_ready(spec.model or _model_of(func)),
                   summary=spec.summary or _first_line(func.__doc__),
                   returns=pydantic_ready(spec.returns), timeout=spec.timeout,
                   streams=spec.streams)


def _refusing_clients(handler: Handler, report) -> Handler:
    """What a client finds under an internal event's name: a refusal (the router's client-facing
    index holds it; `ctx.emit` finds the real handler), reported as a permission refusal. It
    shares the handler's counters, so refusals show as that event's errors in system:metrics."""
    message = f"{handler.event} is internal: only plugins may send it"

    def refuse(data, ctx):
        error = KSIError(FORBIDDEN, message)
        report(ctx.event, error, ctx.connection)
        raise error
    refusal = Handler(handler.event, refuse, handler.plugin, summary=handler.summary)
    refusal.stats = handler.stats
    return refusal


def _model_of(func) -> type | None:
    """The pydantic model (or TypedDict) a handler's first parameter is annotated with, if any."""
    try:
        hints = typing.get_type_hints(func)
        first = next(iter(inspect.signature(func).parameters), None)
    except Exception:  # noqa: BLE001 - unresolvable annotations just mean no model
        return None
    annotation = hints.get(first) if first else None
    return annotation if is_schema(annotation) else None


def _first_line(doc: str | None) -> str:
    return doc.strip().splitlines()[0] if doc and doc.strip() else ""


def reason_of(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def site_of(exc: BaseException | None) -> str | None:
    """`file:line` where exc arose in the plugin's own code: a SyntaxError's own position,
    else the innermost frame outside Python's and installed packages' files and outside the
    daemon's machinery (a built-in plugin's folder counts as its own code)."""
    if exc is None:
        return None
    if isinstance(exc, SyntaxError) and exc.filename:
        return f"{exc.filename}:{exc.lineno}"
    libraries = tuple({os.path.join(sysconfig.get_paths()[key], "")
                       for key in ("stdlib", "platstdlib", "purelib", "platlib")})
    daemon = os.path.join(os.path.dirname(os.path.abspath(__file__)), "")
    plugins = os.path.join(daemon, "plugins", "")
    frames = [(frame.f_code.co_filename, line)
              for frame, line in traceback.walk_tb(exc.__traceback__)
              if not frame.f_code.co_filename.startswith("<")]
    outside_libraries = [f for f in frames if not f[0].startswith(libraries)]
    plugin_code = [f for f in outside_libraries
                   if not f[0].startswith(daemon) or f[0].startswith(plugins)]
    site = (plugin_code or outside_libraries or frames or [None])[-1]
    return f"{site[0]}:{site[1]}" if site else None


def _cycle_reason(start: str, pending: dict[str, set], placed: set) -> str:
    path, node = [start], start
    while True:
        node = min(d for d in pending[node] if d in pending and d not in placed)
        if node in path:
            cycle = path[path.index(node):] + [node]
            return "dependency cycle: " + " -> ".join(cycle)
        path.append(node)


