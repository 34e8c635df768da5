"""The `tools` events: what a model may call, resolved by name and executed with the caller's
identity. The completion tool loop uses them; see docs/TOOLS.md.

    tools:list {agent_id?} -> {tools, count}                  (clients may send it)
    tools:resolve {names, agent_id?} -> {tools, unknown}      (internal: plugins only)
    tools:execute {name, arguments, call_id, ...} -> result   (internal: plugins only)
    tools:mcp_attach {agent_id, owner, servers} / tools:mcp_detach {agent_id}   (internal)
    tools:mcp_servers {agent_id?} -> {servers, count}         (clients may send it)

Tools are every KSI event (schema from its declaration) and the functions plugins add through
`ksi_tools_register` (hookspecs.py). The registry is built at the first request, after every
plugin has started, and again after the set of running plugins changed (one failed: its events
and functions leave the registry). An agent's MCP servers (its profile's `mcp_servers`,
attached by the agent plugin) add their tools to what that agent's requests resolve
(mcp_toolsets.py).
"""
from __future__ import annotations

import asyncio

from ...event_system import event_handler
from ...plugin_base import BasePlugin, hookimpl
from ...plugin_types import PluginCapabilities, PluginMetadata
from . import hookspecs
from .event_tools import DANGEROUS, event_tools
from .execute import ToolExecutor
from .mcp_toolsets import SERVER_TOOLS, AgentToolsets, Toolset
from .models import (ExecuteReply, ExecuteRequest, ListReply, ListRequest, McpAttachReply,
                     McpAttachRequest, McpDetachReply, McpDetachRequest, McpServersReply,
                     McpServersRequest, ResolveReply, ResolveRequest, ToolsSettings)
from .registry import PluginTools, Tool, ToolRegistry


class ToolsPlugin(BasePlugin):
    def __init__(self):
        super().__init__(
            PluginMetadata(name="tools", version="0.1.0", priority=60,
                           description="Tools for models: KSI events and plugin functions",
                           dependencies=["system"], hookspecs=[hookspecs]),
            PluginCapabilities(event_namespaces=["tools"], provides_services=["tools"]))
        self._building: asyncio.Task | None = None
        self._built_for: tuple | None = None  # the register hook's implementations it saw
        self._built: ToolRegistry | None = None

    @hookimpl
    def ksi_startup(self, context):
        self.context = context
        self.settings = ToolsSettings.model_validate(context.config or {})
        self.explicit_only = DANGEROUS | frozenset(self.settings.explicit_only)
        self.executor = ToolExecutor(context, self.settings.default_timeout_s)
        self.register_hook = context.hook("ksi_tools_register")
        self.toolsets = AgentToolsets(
            self.settings.mcp, context.data_dir / "mcp" if context.data_dir else None,
            context.log, taken=lambda name: self._built is not None
            and self._built.find(name) is not None)

    @hookimpl
    async def ksi_shutdown(self, context):
        # No server outlives the daemon: each is stopped and its process waited for.
        await self.toolsets.stop_all()

    async def registry(self) -> ToolRegistry:
        # Built by the first request that needs it, so that every plugin has started (their
        # events are in system:discover, their ksi_tools_register has run). The hook runner
        # gives every hook a new tuple of implementations whenever the running plugins change
        # (a plugin failed), so a tuple other than the one the registry was built for means
        # it lists a failed plugin's tools: build it again. One identity check per request.
        running = self.register_hook.impls
        if self._building is None or running is not self._built_for or \
                (self._building.done() and self._building.exception()):
            self._built_for = running  # (a failed build is retried by the next request)
            self._building = asyncio.ensure_future(self._build())
        self._built = await asyncio.shield(self._building)
        return self._built

    async def _build(self) -> ToolRegistry:
        registry = ToolRegistry()
        catalog = (await self.context.emit("system:discover", {}))["events"]
        for tool in event_tools(catalog, self.context.emit, self.explicit_only):
            registry.add(tool)
        for impl in self.register_hook.impls:
            tools = PluginTools(registry, impl.plugin.name)
            try:
                await impl.run(registry=tools)
            except Exception as exc:  # noqa: BLE001 - one plugin's bug leaves the others' tools
                self.context.log.error("tools_register_failed", plugin=impl.plugin.name,
                                       error=repr(exc))
        return registry

    @event_handler("tools:list", returns=ListReply)
    async def list(self, data: ListRequest):
        """Every tool a model can be offered (with agent_id, its MCP tools too: starts them).

        Each with its model name, schema and source."""
        tools = [tool.describe() for tool in await self.registry()]
        toolset = self.toolsets.of_agent.get(data.agent_id) if data.agent_id else None
        if toolset is not None:
            for server_tools in await asyncio.gather(*map(toolset.tools_of,
                                                          toolset.connections)):
                tools.extend(tool.describe() for tool in server_tools)
        return {"tools": tools, "count": len(tools)}

    @event_handler("tools:resolve", internal=True, returns=ResolveReply)
    async def resolve(self, data: ResolveRequest):
        """The tools named (KSI or model names); names that match nothing are `unknown`.

        For an agent, `mcp:<server>` names all the tools of one of its MCP servers."""
        registry = await self.registry()
        toolset = self.toolsets.of_agent.get(data.agent_id) if data.agent_id else None
        if toolset is not None:  # the servers asked for start together, not one by one
            servers = {found.group(1) for found in map(SERVER_TOOLS.fullmatch, data.names)
                       if found and found.group(1) in toolset.connections}
            await asyncio.gather(*map(toolset.tools_of, servers))
        tools: dict[str, Tool] = {}
        unknown = []
        for name in data.names:
            found = registry.find(name)
            named = [found] if found is not None else \
                await self._agent_tools(toolset, name) if toolset is not None else None
            if named is None:
                unknown.append(name)
            else:
                tools.update((tool.name, tool) for tool in named)
        return {"tools": [tool.describe() for tool in tools.values()], "unknown": unknown}

    async def _agent_tools(self, toolset: Toolset, name: str) -> list[Tool] | None:
        """The agent's MCP tools `name` stands for; None when it names none of its servers.
        A server that did not start stands for no tools: the turn goes on without them."""
        server = SERVER_TOOLS.fullmatch(name)
        if server is not None and server.group(1) in toolset.connections:
            return await toolset.tools_of(server.group(1))
        tool = await toolset.find(name)
        return [tool] if tool is not None else None

    @event_handler("tools:execute", internal=True, returns=ExecuteReply, timeout=None)
    async def execute(self, data: ExecuteRequest):
        """Run one tool call; a failing tool is a normal reply with `ok` false and its error."""
        registry = await self.registry()
        tool = registry.find(data.name)
        if tool is None and data.agent_id in self.toolsets.of_agent:
            tool = await self.toolsets.of_agent[data.agent_id].find(data.name)
        return await self.executor.execute(tool, data)

    # ---- MCP servers of agents -----------------------------------------------------------------

    @event_handler("tools:mcp_attach", internal=True, returns=McpAttachReply)
    async def mcp_attach(self, data: McpAttachRequest):
        """Give an agent its profile's MCP servers; they start when a turn first needs them.

        The agent plugin sends it at spawn and after a daemon restart."""
        await self.registry()  # so the servers' tool names are checked against the others'
        toolset = await self.toolsets.attach(data.agent_id, data.owner, data.servers)
        return {"agent_id": data.agent_id, "toolset": toolset.key,
                "servers": list(toolset.connections), "agents": len(toolset.agents)}

    @event_handler("tools:mcp_detach", internal=True, returns=McpDetachReply)
    async def mcp_detach(self, data: McpDetachRequest):
        """The agent ended: its servers stop if no other agent uses them."""
        return {"agent_id": data.agent_id, "stopped": await self.toolsets.detach(data.agent_id)}

    @event_handler("tools:mcp_servers", returns=McpServersReply)
    def mcp_servers(self, data: McpServersRequest):
        """The agents' MCP servers: state (stopped, running, down), starts, last error."""
        if data.agent_id is not None:
            toolset = self.toolsets.of_agent.get(data.agent_id)
            toolsets = [toolset] if toolset is not None else []
        else:
            toolsets = list(self.toolsets.toolsets.values())
        servers = [entry for toolset in toolsets for entry in toolset.status()]
        return {"servers": servers, "count": len(servers)}


ksi_plugin = ToolsPlugin
