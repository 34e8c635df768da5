"""Schemas of the `mcp` events."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class StatusRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")


class HttpStatus(BaseModel):
    url: str = Field(description="the endpoint, http://127.0.0.1:PORT/mcp")
    token_file: str = Field(description="the file holding the host's bearer token (0600)")


class StatusReply(BaseModel):
    http: HttpStatus | None = Field(description="none: plugins.mcp.http is not set")


class AgentConfigRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    agent_id: str | None = Field(None, max_length=256,
                                 description="whose identity the calls carry; none: nobody's")
    tools: list[str] = Field(max_length=256, description="the tools offered (KSI or model "
                                                         "names, as a profile's `tools`)")


class AgentConfigReply(BaseModel):
    path: str = Field(description="an MCP config file (0600) for `claude --mcp-config`")
    server: str = Field(description="the server's name in it")
    url: str
    allowed_tools: list[str] = Field(description="the tools as Claude Code names them, "
                                                 "mcp__<server>__<tool>, for --allowedTools")


class ForgetAgentRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    agent_id: str = Field(min_length=1, max_length=256)


class ForgetAgentReply(BaseModel):
    agent_id: str
    tokens_revoked: int
