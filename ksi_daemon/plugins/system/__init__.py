"""The `system` events: health, discovery, plugins, subscriptions, history, metrics, shutdown.

Discovery and help are generated from the handlers' pydantic models, never written by hand.
Metrics are assembled in `metrics.py`, written in the Prometheus format by `prometheus.py` and
served over HTTP (`daemon.metrics_http`) by `metrics_http.py`. In cluster mode another plugin's
`EventBridge` (hook `ksi_event_bridge`, hookspecs.py) lets subscribers see other nodes' events
too (remote_events.py, docs/CLUSTER.md).
"""
from __future__ import annotations

import asyncio
import os
import time

from ...event_system import event_handler
from ...plugin_base import BasePlugin, hookimpl
from ...plugin_types import PluginCapabilities, PluginMetadata
from ...protocol import NOT_FOUND, KSIError
from ...event_system import compile_pattern
from ...plugin_manager import BUILTIN_PLUGIN_DIR
from ...plugin_reload import PluginReloader
from ...plugin_watch import PluginWatcher
from . import hookspecs
from .metrics import DaemonMetrics
from .metrics_http import MetricsEndpoint, loopback_address
from .models import (DiscoverRequest, DiscoverReply, EventHistoryRequest, HealthReply,
                     HelpRequest, MetricsRequest, PatternsRequest, PatternsReply, PluginsReply,
                     ReloadReply, ReloadRequest, ShutdownRequest, UnsubscribeRequest)
from .prometheus import CONTENT_TYPE, render
from .remote_events import RemoteEvents
from .schemas import describe_events

_now = time.time


class SystemPlugin(BasePlugin):
    def __init__(self):
        super().__init__(
            PluginMetadata(name="system", version="0.1.0", priority=0,
                           description="Daemon health, discovery, subscriptions and control",
                           hookspecs=[hookspecs]),
            # internals: it reports on the router, the plugin manager and the daemon
            PluginCapabilities(event_namespaces=["system"], internals=True))

    @hookimpl
    def ksi_startup(self, config, context):
        self.router, self.manager, self.daemon = context.internals
        self.reloader = PluginReloader(self.manager, self.router,
                                       config["daemon"]["shutdown_timeout"])
        self.watcher = PluginWatcher(self.reloader, config["daemon"]["plugin_dirs"],
                                     BUILTIN_PLUGIN_DIR, config["daemon"]["watch_period_s"]) \
            if config["daemon"].get("watch_plugins") else None
        # What health reports but never changes, fetched once (it is the benchmarks' baseline):
        self.pid, self.version = os.getpid(), self.daemon.version
        self.started_at = self.daemon.started_at
        self.connections = self.router.connections  # the router's registry (one set)
        settings = config["daemon"]
        self.figures = DaemonMetrics(self.router, self.manager, self.daemon,
                                     context.hook("ksi_queue_depths"),
                                     trace_memory=settings["trace_memory"])
        self.metrics_address = settings["metrics_http"]
        self.health_reports = context.hook("ksi_health_report")  # (the cluster's section)
        self.endpoint: MetricsEndpoint | None = None
        self.config = config
        self.bridge = None  # an EventBridge in cluster mode (bridge_seam.py)

    @hookimpl
    def ksi_ready(self, context):
        self._serve_metrics_over_http(context.log)
        self._open_event_bridge(context.hook("ksi_event_bridge"))
        # Supervised, cancelled at shutdown: replies a handler owes but never settled; the
        # samples behind the recent events/s; the plugin directories' changes in watch mode.
        services = [self.router.expire_overdue_replies(), self.figures.rates.sample_forever()]
        if self.watcher is not None:
            services.append(self.watcher.run())
        return services

    def _serve_metrics_over_http(self, log) -> None:
        """`daemon.metrics_http`, if set: a refused address or a busy port is logged, and the
        daemon runs on without the endpoint (it is an extra, not a reason to stay down)."""
        if not self.metrics_address:
            return
        try:
            host, port = loopback_address(self.metrics_address)
            endpoint = MetricsEndpoint(host, port, self.figures.read)
            self.figures.http_address = endpoint.start()
        except (ValueError, OSError) as exc:
            log.error("metrics_http_refused", address=self.metrics_address, reason=str(exc))
            return
        self.endpoint = endpoint
        log.info("metrics_http_listening", url=f"http://{self.figures.http_address}/metrics")

    def _open_event_bridge(self, hook) -> None:
        """Asked at ready, not at start: the plugin answering starts after this one."""
        for impl in hook.impls:
            bridge = impl.call(config=self.config)
            if bridge is not None:
                bridge.open(RemoteEvents(self.router, bridge))
                self.bridge = bridge
                return

    @hookimpl
    async def ksi_stopping(self, context):
        if self.endpoint is not None:
            await self.endpoint.stop()

    @hookimpl
    def ksi_shutdown(self, context):
        self.figures.stop()  # (tracing from start-up, daemon.trace_memory)

    @event_handler("system:health", returns=HealthReply)
    def health(self, data):
        """Is the daemon up: status, uptime, version, pid, plugins, connections.

        `status` is "degraded" while a plugin has failed (`failed_plugins` names each, with the
        first line of its error and where it arose) or runs but fails at something it needs, a
        full disk (`degraded` names those: PluginContext.report_degraded)."""
        counts = self.manager.counts()  # (cached until a plugin's state changes)
        reply = {"status": "degraded" if counts["failed"] or counts["degraded"] else "healthy",
                "uptime_s": round(_now() - self.started_at, 3),
                "version": self.version, "pid": self.pid, "plugins": counts,
                "connections": len(self.connections),
                "failed_plugins": self._failed_plugins() if counts["failed"] else [],
                "degraded": self._degraded_plugins() if counts["degraded"] else []}
        if self.health_reports:  # (a tuple's truth: nothing more when nobody implements it)
            for impl in self.health_reports.impls:
                reply.update(impl.call())
        return reply

    def _failed_plugins(self) -> list[dict]:
        # The first line of the reason is what fits a health line; system:plugins has it whole.
        return [{"plugin": record.name, "error": (record.error or "").split("\n", 1)[0],
                 "where": record.where or record.source}
                for record in self.manager.order if record.state == "failed"]

    def _degraded_plugins(self) -> list[dict]:
        return [{"plugin": name, "reason": reason}
                for name, reason in self.manager.degraded.items()]

    @event_handler("system:discover", returns=DiscoverReply)
    def discover(self, data: DiscoverRequest):
        """Every event the daemon answers, with its parameters as JSON Schema."""
        events = describe_events(self.router, self.manager.active())
        if data.namespace:
            events = [e for e in events if e["event"].split(":", 1)[0] == data.namespace]
        return {"events": events, "count": len(events)}

    @event_handler("system:help")
    def help(self, data: HelpRequest):
        """One event's description, parameters and, where declared, what it returns."""
        for entry in describe_events(self.router, self.manager.active(), with_returns=True):
            if entry["event"] == data.event:
                return entry
        raise KSIError(NOT_FOUND, f"no event named {data.event}; see system:discover")

    @event_handler("system:plugins", aliases=("system:plugin_status",), returns=PluginsReply)
    def plugins(self, data):
        """Every plugin with its state, error, events, hooks and load time."""
        return {"plugins": self.manager.status()}

    @event_handler("system:subscribe", returns=PatternsReply)
    def subscribe(self, data: PatternsRequest, ctx):
        """Receive a push for every event matching a pattern ('*', 'ns:*', fnmatch).

        In cluster mode the events of every node (docs/CLUSTER.md says which cross)."""
        patterns = self.router.subscribe(ctx.connection, data.patterns)
        if self.bridge is not None:
            return _after(self.bridge.local_interest_changed(), {"patterns": patterns})
        return {"patterns": patterns}

    @event_handler("system:unsubscribe", returns=PatternsReply)
    def unsubscribe(self, data: UnsubscribeRequest, ctx):
        """Stop receiving pushes for these patterns (no patterns: all of them)."""
        patterns = self.router.unsubscribe(ctx.connection, data.patterns)
        if self.bridge is not None:
            return _after(self.bridge.local_interest_changed(), {"patterns": patterns})
        return {"patterns": patterns}

    @event_handler("system:event_history")
    def event_history(self, data: EventHistoryRequest):
        """The most recent events that passed through the router, newest last."""
        matches = compile_pattern(data.pattern) if data.pattern else None
        entries = [e for e in self.router.history if matches is None or matches(e[0])]
        entries = entries[-data.limit:] if data.limit else []
        events = [{"event": e, "correlation_id": c, "timestamp": t, "source": s, "data": d}
                  for e, c, t, s, d in entries]
        return {"events": events, "count": len(events)}

    # Its own deadline: a memory sample may take up to 30 s (MetricsRequest.sample_s).
    @event_handler("system:metrics", timeout=60)
    def metrics(self, data: MetricsRequest):
        """Events/s, latency percentiles, errors and queue depths per event and plugin; memory.

        `format: "prometheus"` answers the Prometheus text format (docs/OPERATIONS.md)."""
        if data.memory_by_plugin:  # answered when the sample ends (a future, as the router allows)
            return asyncio.ensure_future(self._after_memory_sample(data))
        return as_format(self.figures.read(), data.format)

    async def _after_memory_sample(self, data: MetricsRequest) -> dict:
        return as_format(await self.figures.read_after_memory_sample(data.sample_s), data.format)

    @event_handler("system:reload", returns=ReloadReply, timeout=None)
    async def reload(self, data: ReloadRequest):
        """Replace a plugin of daemon.plugin_dirs by its code on disk now, losing no request.

        New requests go to the new version, those running finish on the old (waited for up to
        daemon.shutdown_timeout); the new one's ksi_startup runs before the swap, the old one's
        ksi_shutdown after it.

        A new version that fails to import, register, build its schemas or start answers
        `conflict` (details: stage, error, where) and the old version keeps running; built-in
        and entry-point plugins answer `forbidden` with the reason; an unknown name
        `not_found`. Subscribers see system:plugin_reloaded {plugin, version, events}."""
        return await self.reloader.reload(data.plugin)

    @event_handler("system:shutdown")
    def shutdown(self, data: ShutdownRequest):
        """Stop the daemon: finish in-flight work (up to timeout_s), then exit 0."""
        self.daemon.request_shutdown(data.timeout_s)
        return {"status": "shutting_down"}


def _after(waiting, reply: dict) -> asyncio.Future:
    """The reply once the other nodes can know of the change (the bridge bounds the wait)."""
    async def answer():
        await waiting
        return reply
    return asyncio.ensure_future(answer())


def as_format(figures: dict, format: str) -> dict:
    if format == "prometheus":
        return {"format": "prometheus", "content_type": CONTENT_TYPE, "text": render(figures)}
    return figures


ksi_plugin = SystemPlugin
