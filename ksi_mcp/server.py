"""The MCP server: the daemon's event tools listed, called, and followed as plugins come and go.

One `ToolServer` serves the MCP connections of one transport: the one stdio connection, or
every session of the HTTP endpoint. Who asks (`caller_of(ctx)`, callers.py) chooses the tools
offered and the identity a call runs with; without `caller_of` every request is the host's,
offered the server's own `Exposure`. The catalog is the daemon's `tools:list`; it is read
again when the connection to the daemon is new, when the daemon announces a change of plugins
or tools, when a call answers `unavailable` (a plugin may have failed under it) and on every
tools/list. When the host's tools change, hosts are told: on the 2025 handshake protocols with
`notifications/tools/list_changed` on the connection, on 2026-07-28 through
`subscriptions/listen` streams, the only place that protocol carries it.

Resources (resources.py) are read on demand, each with its event, so a caller who is not
offered that event (`state:get` for `ksi://state/...`) cannot read it; a state key a host
follows (`resources/subscribe`, or a 2026-07-28 listen stream naming its URI) is announced as
updated when the daemon pushes its `state:changed`.
"""
from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from typing import Any

import mcp_types as types
import orjson
from mcp.server.lowlevel import NotificationOptions, Server
from mcp.server.session import ServerSession
from mcp.server.subscriptions import (InMemorySubscriptionBus, ListenHandler, ResourceUpdated,
                                      ToolsListChanged)
from mcp.shared.exceptions import MCPError
from mcp_types import INTERNAL_ERROR, INVALID_PARAMS
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS

from ksi_client import Event, KSIConnectionError, KSIError
from ksi_client.event_client import compile_pattern

from . import resources
from .callers import Caller
from .catalog import Catalog, Exposure
from .daemon import Daemon
from .results import UNAVAILABLE, code_of, listing_of, result_of_error, result_of_reply

log = logging.getLogger("ksi.mcp")

CATALOG_TIMEOUT_S = 5.0
# Pushes after which the tool catalog may differ: the tools plugin's own change event, and
# plugins starting or failing as the system plugin announces them.
CATALOG_PATTERNS = ("tools:changed", "system:plugin*")
STATE_CHANGED = "state:changed"  # -> resource-updated for ksi://state/{namespace}/{key}
FOLLOWED = (*CATALOG_PATTERNS, STATE_CHANGED)
INSTRUCTIONS = ("Each tool sends one KSI event to the local KSI daemon and returns its reply "
                "(structured content, and the same as JSON text). A failed call carries the "
                "daemon's error code (validation_error, not_found, unavailable, ...).")
# The 2025 hosts told of a change outside any request. An HTTP endpoint sees a new session per
# agent turn and the SDK does not say when one ends: only the most recent ones are kept.
HANDSHAKE_SESSIONS_KEPT = 256


class ToolServer:
    def __init__(self, daemon: Daemon, exposure: Exposure, *, call_timeout_s: float,
                 version: str = "", caller_of: Callable[[Any], Caller] | None = None,
                 events_only: bool = True):
        self.daemon = daemon
        self.exposure = exposure
        self.call_timeout_s = call_timeout_s
        self.host = Caller(exposure)
        self.caller_of = caller_of or (lambda ctx: self.host)
        self.events_only = events_only  # see Catalog.from_tools_list
        self.catalog = Catalog()  # the host's
        self._tools_list: dict = {}  # the daemon's last tools:list, for the other callers
        self._catalogs: dict[Exposure, Catalog] = {}
        self._bus = InMemorySubscriptionBus()
        self._handshake_sessions: deque[ServerSession] = deque(maxlen=HANDSHAKE_SESSIONS_KEPT)
        self._subscribed_uris: set[str] = set()  # resources/subscribe of the 2025 protocols
        self._is_catalog_event = [compile_pattern(pattern) for pattern in CATALOG_PATTERNS]
        self.mcp = Server("ksi", version=version, instructions=INSTRUCTIONS,
                          on_list_tools=self.list_tools, on_call_tool=self.call_tool,
                          on_list_resources=self.list_resources,
                          on_list_resource_templates=self.list_resource_templates,
                          on_read_resource=self.read_resource,
                          on_subscribe_resource=self.subscribe_resource,
                          on_unsubscribe_resource=self.unsubscribe_resource,
                          on_subscriptions_listen=ListenHandler(self._bus))
        self.mcp.add_notification_handler("notifications/initialized", types.NotificationParams,
                                          self._remember_session)

    def initialization_options(self):
        return self.mcp.create_initialization_options(NotificationOptions(tools_changed=True))

    # ---- MCP requests -----------------------------------------------------------------------

    async def list_tools(self, ctx, params) -> types.ListToolsResult:
        # The host is fetching the list now: no need to also tell it the list changed.
        await self.refresh_catalog(tell_hosts=False)
        offered = self.catalog_for(self.caller_of(ctx))
        return types.ListToolsResult(tools=[listing_of(tool) for tool in offered.tools])

    async def call_tool(self, ctx, params: types.CallToolRequestParams) -> types.CallToolResult:
        caller = self.caller_of(ctx)
        tool = self.catalog_for(caller).find(params.name)
        if tool is None:  # offered since the host's last tools/list, perhaps
            await self.refresh_catalog()
            tool = self.catalog_for(caller).find(params.name)
        if tool is None:
            return result_of_error(KSIError(
                "not_found", f"this server offers no tool named {params.name!r} (tools/list "
                "shows the tools it offers)"), str(self.daemon.socket_path))
        try:
            data = await self.daemon.call_tool(tool, params.arguments or {}, caller,
                                               self.call_timeout_s)
        except KSIError as error:
            if code_of(error) == UNAVAILABLE:
                await self.refresh_catalog()
            return result_of_error(error, str(self.daemon.socket_path))
        except Exception as exc:  # noqa: BLE001 - a bug here must not end the host's session
            log.exception("tool %s failed", tool.model_name)
            return result_of_error(KSIError("handler_error", f"the MCP server failed: {exc}"),
                                   str(self.daemon.socket_path))
        return result_of_reply(data)

    # ---- resources --------------------------------------------------------------------------
    # A resource read has no isError: a KSI error there is a JSON-RPC error carrying the code.

    async def list_resource_templates(self, ctx, params) -> types.ListResourceTemplatesResult:
        return types.ListResourceTemplatesResult(resource_templates=resources.templates())

    async def list_resources(self, ctx, params) -> types.ListResourcesResult:
        """The agents running now (state keys and conversations are many: read them by URI)."""
        if not self.catalog_for(self.caller_of(ctx)).offers_event(resources.KINDS["agent"].event):
            return types.ListResourcesResult(resources=[])
        try:
            reply = await self.daemon.request("agent:list", {}, CATALOG_TIMEOUT_S)
        except KSIError:
            return types.ListResourcesResult(resources=[])
        return types.ListResourcesResult(resources=[
            types.Resource(name=f"agent {agent['agent_id']}", mime_type=resources.JSON,
                           uri=resources.uri_of("agent", agent["agent_id"]))
            for agent in reply.get("agents") or ()])

    async def read_resource(self, ctx, params: types.ReadResourceRequestParams):
        uri = str(params.uri)
        wanted = resources.request_for(uri)
        if wanted is None:
            raise MCPError(INVALID_PARAMS, f"no KSI resource is named {uri!r} (resources/"
                                           "templates/list shows the forms)")
        if not self.catalog_for(self.caller_of(ctx)).offers_event(wanted.kind.event):
            raise MCPError(INVALID_PARAMS, f"forbidden: reading {uri} takes the tool "
                           f"{wanted.kind.event}, which this caller is not offered",
                           {"code": "forbidden"})
        try:
            reply = await self.daemon.request(wanted.kind.event, wanted.data, self.call_timeout_s)
        except KSIError as error:
            code = code_of(error)
            raise MCPError(INVALID_PARAMS if code in ("not_found", "validation_error")
                           else INTERNAL_ERROR, f"{code}: {error.message}",
                           {"code": code, "details": error.details}) from None
        content = wanted.kind.content(reply)
        if content is resources.MISSING:
            raise MCPError(INVALID_PARAMS, f"not_found: nothing at {uri}", {"code": "not_found"})
        return types.ReadResourceResult(contents=[types.TextResourceContents(
            uri=uri, mime_type=resources.JSON, text=orjson.dumps(content).decode())])

    async def subscribe_resource(self, ctx, params: types.SubscribeRequestParams):
        self._subscribed_uris.add(str(params.uri))
        return types.EmptyResult()

    async def unsubscribe_resource(self, ctx, params: types.UnsubscribeRequestParams):
        self._subscribed_uris.discard(str(params.uri))
        return types.EmptyResult()

    # ---- what the daemon pushes -------------------------------------------------------------

    async def on_push(self, event: Event) -> None:
        if event.event == STATE_CHANGED:
            await self._tell_hosts_state_changed(event.data or {})
        elif any(matches(event.event) for matches in self._is_catalog_event):
            await self.refresh_catalog()

    async def _tell_hosts_state_changed(self, change: dict) -> None:
        namespace, key = str(change.get("namespace")), change.get("key")
        if key is not None:
            uris = {resources.uri_of("state", namespace, str(key))}
        else:  # state:clear: every key of the namespace that a host follows
            prefix = resources.uri_of("state", namespace, "")
            uris = {uri for uri in self._subscribed_uris if uri.startswith(prefix)}
        for uri in uris:
            # The listen streams keep only the URIs their host named.
            await self._bus.publish(ResourceUpdated(uri=uri))
            if uri in self._subscribed_uris:
                for session in self._handshake_sessions:
                    await session.send_resource_updated(uri)

    # ---- the catalog ------------------------------------------------------------------------

    async def refresh_catalog(self, *, tell_hosts: bool = True) -> None:
        """Read `tools:list` again; a daemon that cannot answer leaves the last catalog, so a
        host keeps its tools across a daemon restart and their calls say `unavailable`."""
        try:
            reply = await self.daemon.request("tools:list", {}, CATALOG_TIMEOUT_S)
        except KSIConnectionError:
            return
        except KSIError as exc:
            log.warning("tools:list failed (%s: %s): keeping the last tool list",
                        exc.code, exc.message)
            return
        if reply != self._tools_list:
            self._tools_list, self._catalogs = reply, {}
        catalog = self.catalog_for(self.host)
        if catalog == self.catalog:
            return
        log.info("tools now offered: %d", len(catalog.tools))
        self.catalog = catalog
        if tell_hosts:
            await self._tell_hosts_tools_changed()

    def catalog_for(self, caller: Caller) -> Catalog:
        """The tools `caller` is offered, from the last `tools:list` (built once per kind of
        caller and list: an agent's turn lists and calls tools many times)."""
        catalog = self._catalogs.get(caller.exposure)
        if catalog is None:
            catalog = self._catalogs[caller.exposure] = Catalog.from_tools_list(
                self._tools_list, caller.exposure, events_only=self.events_only)
        return catalog

    async def _tell_hosts_tools_changed(self) -> None:
        await self._bus.publish(ToolsListChanged())
        for session in self._handshake_sessions:
            await session.send_tool_list_changed()  # best effort: never raises

    async def _remember_session(self, ctx, params: Any) -> None:
        # A 2025 host finished its handshake: its connection is where list_changed goes later,
        # outside any request. (A 2026-07-28 host has no handshake; it listens instead.)
        if ctx.protocol_version in HANDSHAKE_PROTOCOL_VERSIONS:
            self._handshake_sessions.append(ctx.session)
