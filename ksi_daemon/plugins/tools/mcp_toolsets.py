"""The MCP servers of agent profiles, shared by the agents that use them.

An agent is attached (`tools:mcp_attach`) with its profile's name and `mcp_servers`; agents with
the same profile and the same servers share one `Toolset`, so one process per server serves
them all. Nothing starts at attach: a server starts when an agent's turn first needs its tools
(resolving `mcp:<server>`), and stops when the last agent of its toolset is detached, or at
daemon shutdown.

A server's tools are `Tool`s of the tools plugin's registry, so the executor (hooks, permission,
timeout) and the completion loop treat them like any other: KSI name `mcp:<server>:<tool>`,
model name `<server>__<tool>`, source `mcp:<server>`.
"""
from __future__ import annotations

import asyncio
import hashlib
import re
from pathlib import Path
from typing import Callable

import orjson

from .mcp_config import McpSettings, ServerConfig
from .mcp_connection import McpConnection
from .registry import MODEL_NAME, Tool

SERVER_TOOLS = re.compile(r"^mcp:([A-Za-z0-9-]+)$")          # every tool of one server
ONE_TOOL = re.compile(r"^mcp:([A-Za-z0-9-]+):(.+)$")         # one tool, by its KSI name
MODEL_TOOL = re.compile(r"^([A-Za-z0-9-]+)__(.+)$")          # one tool, by its model name


def toolset_key(owner: str, servers: dict[str, ServerConfig]) -> str:
    """Same profile, same servers: same toolset. A profile edited between two spawns (or two
    inline configs of the same name) gets a toolset of its own."""
    canonical = orjson.dumps({name: config.model_dump() for name, config in servers.items()},
                             option=orjson.OPT_SORT_KEYS)
    return f"{owner}#{hashlib.sha256(canonical).hexdigest()[:12]}"


class Toolset:
    def __init__(self, key: str, owner: str, servers: dict[str, ServerConfig],
                 settings: McpSettings, logs_dir: Path | None, log,
                 taken: Callable[[str], bool]):
        self.key, self.owner, self.settings, self.log = key, owner, settings, log
        self.agents: set[str] = set()
        self.connections = {
            name: McpConnection(name, config, settings,
                                logs_dir / f"{key.replace('#', '-')}-{name}.log"
                                if logs_dir else None, log.bind(owner=owner))
            for name, config in servers.items()}
        self._taken = taken  # whether a name already belongs to another tool (the registry's)
        self._built: dict[str, tuple[int, dict[str, Tool]]] = {}  # server -> (listing, tools)

    async def tools_of(self, server: str) -> list[Tool]:
        """The server's tools, starting it when its tools are not known yet. A server that does
        not start offers none this time (logged; `tools:mcp_servers` says why)."""
        connection = self.connections[server]
        if connection.listed is None:
            try:
                await connection.session()
            except Exception as exc:  # noqa: BLE001 - the turn goes on without these tools
                self.log.warning("mcp_server_tools_missing", owner=self.owner, server=server,
                                 error=getattr(exc, "message", repr(exc)))
                return []
        return list(self._tools(server).values())

    async def find(self, name: str) -> Tool | None:
        """One tool by its KSI name (`mcp:docs:search`) or model name (`docs__search`)."""
        found = ONE_TOOL.fullmatch(name) or MODEL_TOOL.fullmatch(name)
        if found is None or found.group(1) not in self.connections:
            return None
        server, tool = found.groups()
        if self.connections[server].listed is None:
            await self.tools_of(server)
        return self._tools(server).get(tool)

    def _tools(self, server: str) -> dict[str, Tool]:
        """The server's tools as registry tools, rebuilt when it listed them anew."""
        connection = self.connections[server]
        listing = connection.listed or []
        built = self._built.get(server)
        if built is None or built[0] != id(listing):
            built = self._built[server] = (id(listing), self._build(server, connection,
                                                                    listing))
        return built[1]

    def _build(self, server: str, connection: McpConnection, listing: list) -> dict[str, Tool]:
        tools: dict[str, Tool] = {}
        for listed in listing:
            name, model_name = f"mcp:{server}:{listed.name}", f"{server}__{listed.name}"
            if not MODEL_NAME.fullmatch(model_name) or self._taken(name) \
                    or self._taken(model_name):
                self.log.warning("tool_refused", tool=name, source=f"mcp:{server}",
                                 reason=f"model name {model_name!r} is unusable or taken")
                continue
            hints = listed.annotations
            tools[listed.name] = Tool(
                name=name, model_name=model_name, description=listed.description or "",
                parameters=listed.input_schema or {"type": "object", "properties": {}},
                source=f"mcp:{server}",
                idempotent=bool(hints and hints.idempotent_hint),
                explicit_only=False, timeout_s=self.settings.call_timeout_s,
                run=_runner(connection, listed.name))
        return tools

    def status(self) -> list[dict]:
        return [{"owner": self.owner, "toolset": self.key, "agents": sorted(self.agents),
                 **connection.status()} for connection in self.connections.values()]

    async def stop(self) -> None:
        await asyncio.gather(*(connection.stop() for connection in self.connections.values()))


class AgentToolsets:
    """Which agent uses which toolset; a toolset lives while one of its agents does."""

    def __init__(self, settings: McpSettings, logs_dir: Path | None, log,
                 taken: Callable[[str], bool]):
        self.settings, self.logs_dir, self.log, self._taken = settings, logs_dir, log, taken
        self.toolsets: dict[str, Toolset] = {}
        self.of_agent: dict[str, Toolset] = {}

    async def attach(self, agent_id: str, owner: str,
                     servers: dict[str, ServerConfig]) -> Toolset:
        key = toolset_key(owner, servers)
        known = self.of_agent.get(agent_id)
        if known is not None and known.key != key:
            await self.detach(agent_id)
        toolset = self.toolsets.get(key)
        if toolset is None:
            toolset = self.toolsets[key] = Toolset(key, owner, servers, self.settings,
                                                   self.logs_dir, self.log, self._taken)
        toolset.agents.add(agent_id)
        self.of_agent[agent_id] = toolset
        return toolset

    async def detach(self, agent_id: str) -> list[str]:
        """Forget the agent; the names of the servers stopped because it was the last."""
        toolset = self.of_agent.pop(agent_id, None)
        if toolset is None:
            return []
        toolset.agents.discard(agent_id)
        if toolset.agents:
            return []
        del self.toolsets[toolset.key]
        await toolset.stop()
        return list(toolset.connections)

    async def stop_all(self) -> None:
        toolsets, self.toolsets, self.of_agent = list(self.toolsets.values()), {}, {}
        await asyncio.gather(*(toolset.stop() for toolset in toolsets))


def _runner(connection: McpConnection, tool: str):
    async def run(arguments: dict, agent_id: str | None):
        return await connection.call(tool, arguments)

    return run
