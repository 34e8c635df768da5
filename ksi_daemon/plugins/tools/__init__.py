"""The `tools` events: what a model may call, resolved by name and executed with the caller's
identity. The completion tool loop uses them; see docs/TOOLS.md.

    tools:list {agent_id?} -> {tools, count}                  (clients may send it)
    tools:resolve {names, agent_id?} -> {tools, unknown}      (internal: plugins only)
    tools:execute {name, arguments, call_id, ...} -> result   (internal: plugins only)

Tools are every KSI event (schema from its declaration) and the functions plugins add through
`ksi_tools_register` (hookspecs.py). The registry is built at the first request, after every
plugin has started, and again after the set of running plugins changed (one failed: its events
and functions leave the registry).
"""
from __future__ import annotations

import asyncio

from ...event_system import event_handler
from ...plugin_base import BasePlugin, hookimpl
from ...plugin_types import PluginCapabilities, PluginMetadata
from . import hookspecs
from .event_tools import DANGEROUS, event_tools
from .execute import ToolExecutor
from .models import (ExecuteReply, ExecuteRequest, ListReply, ListRequest, ResolveReply,
                     ResolveRequest, ToolsSettings)
from .registry import PluginTools, ToolRegistry


class ToolsPlugin(BasePlugin):
    def __init__(self):
        super().__init__(
            PluginMetadata(name="tools", version="0.1.0", priority=60,
                           description="Tools for models: KSI events and plugin functions",
                           dependencies=["system"], hookspecs=[hookspecs]),
            PluginCapabilities(event_namespaces=["tools"], provides_services=["tools"]))
        self._building: asyncio.Task | None = None
        self._built_for: tuple | None = None  # the register hook's implementations it saw

    @hookimpl
    def ksi_startup(self, context):
        self.context = context
        self.settings = ToolsSettings.model_validate(context.config or {})
        self.explicit_only = DANGEROUS | frozenset(self.settings.explicit_only)
        self.executor = ToolExecutor(context, self.settings.default_timeout_s)
        self.register_hook = context.hook("ksi_tools_register")

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
        return await asyncio.shield(self._building)

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
        """Every tool a model can be offered, with its model name, schema and source."""
        tools = [tool.describe() for tool in await self.registry()]
        return {"tools": tools, "count": len(tools)}

    @event_handler("tools:resolve", internal=True, returns=ResolveReply)
    async def resolve(self, data: ResolveRequest):
        """The tools named (KSI or model names); names that match nothing are `unknown`."""
        registry = await self.registry()
        tools, unknown = [], []
        for name in data.names:
            tool = registry.find(name)
            (tools.append(tool.describe()) if tool else unknown.append(name))
        return {"tools": tools, "unknown": unknown}

    @event_handler("tools:execute", internal=True, returns=ExecuteReply, timeout=None)
    async def execute(self, data: ExecuteRequest):
        """Run one tool call; a failing tool is a normal reply with `ok` false and its error."""
        registry = await self.registry()
        return await self.executor.execute(registry.find(data.name), data)


ksi_plugin = ToolsPlugin
