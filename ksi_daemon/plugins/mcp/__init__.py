"""The `mcp` plugin: KSI's events as MCP tools over streamable HTTP, for MCP hosts and for
KSI's own `claude-cli/...` agents (docs/MCP.md).

    plugins.mcp.http: "127.0.0.1:PORT"    off when unset; loopback only

    mcp:status {} -> {http: {url, token_file} | null}
    mcp:agent_config {agent_id?, tools} -> {path, server, url, allowed_tools}   (internal)
    mcp:forget_agent {agent_id} -> {agent_id, tokens_revoked}                   (internal)

It serves what interfaces/mcp_server.py serves over stdio (the same `ksi_mcp` server), to
whoever sends a bearer token it knows: the host's (written to `var/plugins/mcp/http.token` at
every start) or one it issued to an agent, which is offered only that agent's tools and whose
calls run with its identity.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import orjson

from ...event_system import event_handler
from ...plugin_base import BasePlugin, hookimpl
from ...plugin_types import PluginCapabilities, PluginMetadata
from ...private_files import write_owner_only
from ...protocol import NOT_FOUND, UNAVAILABLE, KSIError
from .models import (AgentConfigReply, AgentConfigRequest, ForgetAgentReply, ForgetAgentRequest,
                     StatusReply, StatusRequest)
from .settings import McpSettings, NotLoopback, loopback_address

SERVER_NAME = "ksi"  # the name hosts and agents know the server by: tools mcp__ksi__<tool>
TOKEN_FILE = "http.token"
AGENT_CONFIGS = "agents"


class McpPlugin(BasePlugin):
    def __init__(self):
        super().__init__(
            PluginMetadata(name="mcp", version="0.1.0", priority=900,
                           description="KSI's events as MCP tools over streamable HTTP",
                           dependencies=["system"]),
            PluginCapabilities(event_namespaces=["mcp"], provides_services=["mcp"]))
        self.endpoint = self.inbox = self.book = None  # set when the endpoint serves

    @hookimpl
    def ksi_startup(self, config, context):
        self.context = context
        self.settings = McpSettings.model_validate(context.config or {})
        self.socket_path = Path(config["daemon"]["socket_path"])
        self.address = None
        if self.settings.http is not None:
            try:
                self.address = loopback_address(self.settings.http)
            except NotLoopback as refused:
                context.log.error("mcp_http_refused", address=self.settings.http,
                                  reason=str(refused))
                raise
        self.token_file = Path(context.data_dir) / TOKEN_FILE
        self.agent_configs = Path(context.data_dir) / AGENT_CONFIGS

    @hookimpl
    async def ksi_ready(self, context):
        if self.address is None:
            context.log.info("mcp_http_off", enable='plugins.mcp.http: "127.0.0.1:PORT"')
            return None
        from .serving import Serving  # (the MCP SDK: imported only when the endpoint is on)
        serving = Serving(context, self.settings, self.address, self.socket_path,
                          self.metadata.version)
        self.endpoint, self.book, self.inbox = serving.endpoint, serving.book, serving.inbox
        self._forget_agent_configs()
        write_owner_only(self.token_file, self.book.new_host_token(serving.host).encode() + b"\n")
        await serving.follow(context)
        context.log.info("mcp_http_listening", url=self.endpoint.url,
                         token_file=str(self.token_file))
        return self.endpoint.serve()

    @hookimpl
    def ksi_stopping(self):
        if self.endpoint is not None:
            self.endpoint.stop()

    @hookimpl
    def ksi_shutdown(self):
        if self.inbox is not None:
            self.inbox.close()
        if self.endpoint is not None:  # the tokens die with this run: leave none behind
            self.token_file.unlink(missing_ok=True)
            self._forget_agent_configs()

    # ---- events -------------------------------------------------------------------------------

    @event_handler("mcp:status", returns=StatusReply)
    def status(self, data: StatusRequest):
        """Where the MCP endpoint listens and which file holds the host's token."""
        if self.endpoint is None:
            return {"http": None}
        return {"http": {"url": self.endpoint.url, "token_file": str(self.token_file)}}

    @event_handler("mcp:agent_config", internal=True, returns=AgentConfigReply)
    async def agent_config(self, data: AgentConfigRequest, ctx):
        """An MCP config for a `claude` run: this endpoint, with a token offering the tools
        named and acting as the agent."""
        if self.endpoint is None:
            raise KSIError(UNAVAILABLE, "the MCP endpoint is off: set plugins.mcp.http to "
                                        '"127.0.0.1:PORT" for claude-cli agents to use tools')
        resolved = await ctx.emit("tools:resolve", {"names": data.tools,
                                                   "agent_id": data.agent_id})
        if resolved["unknown"]:
            raise KSIError(NOT_FOUND, f"unknown tools: {', '.join(resolved['unknown'])} "
                                      "(see tools:list)", {"unknown": resolved["unknown"]})
        tools = resolved["tools"]
        client_id, token = self.book.token_for_agent(data.agent_id,
                                                     [tool["name"] for tool in tools])
        path = self._config_path_of(client_id)
        if not path.exists():
            write_owner_only(path, orjson.dumps({"mcpServers": {SERVER_NAME: {
                "type": "http", "url": self.endpoint.url,
                "headers": {"Authorization": f"Bearer {token}"}}}}))
        return {"path": str(path), "server": SERVER_NAME, "url": self.endpoint.url,
                "allowed_tools": [f"mcp__{SERVER_NAME}__{tool['model_name']}"
                                  for tool in tools]}

    @event_handler("mcp:forget_agent", internal=True, returns=ForgetAgentReply)
    def forget_agent(self, data: ForgetAgentRequest):
        """An agent ended: its tokens are refused from now on, its config files removed."""
        if self.endpoint is None:
            return {"agent_id": data.agent_id, "tokens_revoked": 0}
        gone = self.book.revoke_agent(data.agent_id)
        for client_id in gone:
            self._config_path_of(client_id).unlink(missing_ok=True)
        return {"agent_id": data.agent_id, "tokens_revoked": len(gone)}

    def _config_path_of(self, client_id: str) -> Path:
        # (an agent id may hold what a file name must not)
        return self.agent_configs / f"{hashlib.sha256(client_id.encode()).hexdigest()[:24]}.json"

    def _forget_agent_configs(self) -> None:
        if self.agent_configs.is_dir():
            for path in self.agent_configs.glob("*.json"):
                path.unlink(missing_ok=True)


ksi_plugin = McpPlugin
