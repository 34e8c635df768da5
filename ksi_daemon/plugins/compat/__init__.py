"""Compatibility mode for upstream KSI's event clients (`transports.unix.compatibility_mode`).

Loaded only with the mode on (plugin_manager.OPTIONAL_BUILTINS). It answers the events the
pluggy-era upstream clients send that this daemon has no name for (`transport:connection`,
`admin:identify`, `agent:connect`/`agent:disconnect`, `monitor:get_events`), and through
`ksi_client_adapters` (core/adapters.py) accepts their request fields (requests.py) and gives
the clients that announced themselves the reply shapes they read (replies.py). The legacy
`{"command": ...}` protocol of control.sock is the transport's (transport_unix/legacy_*.py).
docs/OPERATIONS.md, "Compatibility mode", lists every mapping.
"""
from __future__ import annotations

import weakref
from datetime import datetime
from typing import Callable

from ...event_system import compile_pattern, event_handler
from ...plugin_base import BasePlugin, hookimpl
from ...plugin_types import PluginCapabilities, PluginMetadata
from ...protocol import VALIDATION_ERROR, KSIError
from . import replies, requests
from .models import AdminIdentity, AgentPresence, ConnectionAnnouncement, EventsQuery


class Adapter:
    """An EventAdapter (core/adapters.py) from two functions; `reply` only for the
    connections `upstream` holds."""

    def __init__(self, upstream, request: Callable = None, reply: Callable = None,
                 reply_to_all: Callable = None):
        self.upstream = upstream
        self._request, self._reply, self._reply_to_all = request, reply, reply_to_all

    def request(self, data: dict, ctx) -> dict:
        return self._request(data) if self._request else data

    def reply(self, result: dict, data: dict, ctx) -> dict:
        if self._reply_to_all is not None:
            result = self._reply_to_all(result, data)
        if self._reply is not None and ctx.connection in self.upstream:
            result = self._reply(result)
        return result


class CompatPlugin(BasePlugin):
    def __init__(self):
        super().__init__(
            PluginMetadata(name="compat", version="0.1.0",
                           description="Upstream KSI's clients and legacy commands, as the "
                                       "deployment guide's compatibility mode"),
            PluginCapabilities(event_namespaces=["transport", "admin", "monitor"]))
        # the connections that announced themselves as upstream clients (closed ones go)
        self.upstream: weakref.WeakSet = weakref.WeakSet()

    @hookimpl
    def ksi_client_adapters(self, context):
        up = self.upstream
        return {
            "completion:async": Adapter(up, request=requests.completion_request),
            "agent:spawn": Adapter(up, request=requests.spawn_request),
            "state:list": Adapter(up, request=requests.list_request, reply_to_all=lambda r, d:
                                  replies.list_reply(r, d.get("pattern"))),
            "state:set": Adapter(up, reply=replies.set_reply),
            "state:delete": Adapter(up, reply=replies.delete_reply),
            "message:publish": Adapter(up, request=requests.publish_request),
            "message:subscribe": Adapter(up, request=requests.subscribe_request),
            "message:unsubscribe": Adapter(up, request=requests.unsubscribe_request),
            "system:plugins": Adapter(up, reply=replies.plugins_by_name),
            "system:discover": Adapter(up, reply=replies.discover_by_namespace),
        }

    def _remember(self, ctx) -> None:
        if ctx.connection is not None:
            self.upstream.add(ctx.connection)

    @event_handler("transport:connection")
    def connection(self, data: ConnectionAnnouncement, ctx):
        """Upstream ksi_client's hello and goodbye: acknowledged; replies to this connection
        take upstream's shapes from now on (until its goodbye)."""
        if data.action == "connect":
            self._remember(ctx)
        elif ctx.connection is not None:
            self.upstream.discard(ctx.connection)
        return {"status": "connected" if data.action == "connect" else "disconnected",
                "client_id": data.client_id}

    @event_handler("admin:identify")
    def identify(self, data: AdminIdentity, ctx):
        """Upstream ksi_admin's hello: acknowledged, with upstream's reply shapes from now on."""
        self._remember(ctx)
        return {"status": "identified", "client_id": data.client_id, "role": data.role}

    @event_handler("agent:connect")
    def agent_connect(self, data: AgentPresence, ctx):
        """Upstream MultiAgentClient.register_as_agent: acknowledged (it reads status)."""
        self._remember(ctx)
        return {"status": "connected", "agent_id": data.agent_id}

    @event_handler("agent:disconnect")
    def agent_disconnect(self, data: AgentPresence):
        """Upstream MultiAgentClient.unregister_agent: acknowledged."""
        return {"status": "disconnected", "agent_id": data.agent_id}

    @event_handler("monitor:get_events")
    async def get_events(self, data: EventsQuery, ctx):
        """Upstream ksi_admin's event log query: system:event_history, filtered its way."""
        history = await ctx.emit("system:event_history", {"limit": 100_000})
        matchers = [compile_pattern(p) for p in data.event_patterns or ()]
        since, until = _moment(data.since, "since"), _moment(data.until, "until")
        events = [e for e in history["events"]
                  if (not matchers or any(m(e["event"]) for m in matchers))
                  and (since is None or e["timestamp"] >= since)
                  and (until is None or e["timestamp"] <= until)]
        events = events[-data.limit:] if data.limit else []
        if data.reverse:
            events.reverse()
        return {"events": events, "count": len(events), "total_events": history["count"]}


def _moment(value, field: str) -> float | None:
    if value is None or isinstance(value, (int, float)):
        return value
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise KSIError(VALIDATION_ERROR, f"{field} must be a Unix time or an ISO 8601 time",
                       [{"loc": [field], "msg": "not a time", "input": value}]) from None


ksi_plugin = CompatPlugin
