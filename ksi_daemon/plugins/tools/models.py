"""Schemas of the tools events and the typed contexts of the tool-execute hooks."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from .mcp_config import McpSettings, ServerConfigs


class Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ListRequest(Request):
    agent_id: str | None = Field(None, max_length=256,
                                 description="Also list this agent's MCP server tools")


class ToolDescription(BaseModel):
    name: str
    model_name: str
    description: str
    parameters: dict
    source: str
    idempotent: bool
    explicit_only: bool


class ListReply(BaseModel):
    tools: list[ToolDescription]
    count: int


class ResolveRequest(Request):
    names: list[str] = Field(max_length=1024)
    agent_id: str | None = Field(None, max_length=256)


class ResolveReply(BaseModel):
    tools: list[ToolDescription]
    unknown: list[str]


class ExecuteRequest(Request):
    name: str = Field(max_length=256)
    arguments: dict = Field(default_factory=dict)
    call_id: str = Field(max_length=256)
    request_id: str | None = Field(None, max_length=256)
    agent_id: str | None = Field(None, max_length=256)
    timeout_s: float | None = Field(None, gt=0, le=3600)


class ToolError(BaseModel):
    code: str
    message: str
    details: Any = Field(None, description="the KSIError's details, when it had any (the "
                                           "failing fields of a validation_error)")


class ExecuteReply(BaseModel):
    name: str
    call_id: str
    ok: bool
    result: Any = None
    error: ToolError | None
    duration_ms: float
    annotations: dict


class ToolsSettings(BaseModel):
    """`plugins.tools` in the daemon config."""
    model_config = ConfigDict(extra="ignore")
    explicit_only: list[str] = Field(default_factory=list,
                                     description="More events offered only when named exactly")
    default_timeout_s: float = Field(30.0, gt=0)
    mcp: McpSettings = Field(default_factory=McpSettings)


class McpAttachRequest(Request):
    agent_id: str = Field(max_length=256)
    owner: str = Field(max_length=64, description="the agent's profile name: agents of one "
                                                  "profile with the same servers share them")
    servers: ServerConfigs = Field(description="name -> {command, args?, env?, cwd?} | {url}")


class McpAttachReply(BaseModel):
    agent_id: str
    toolset: str
    servers: list[str]
    agents: int = Field(description="agents sharing these servers, this one included")


class McpDetachRequest(Request):
    agent_id: str = Field(max_length=256)


class McpDetachReply(BaseModel):
    agent_id: str
    stopped: list[str] = Field(description="servers stopped because this agent was their last")


class McpServersRequest(Request):
    agent_id: str | None = Field(None, max_length=256, description="only this agent's servers")


class McpServerStatus(BaseModel):
    owner: str
    toolset: str
    agents: list[str]
    server: str
    transport: str
    state: str = Field(description="stopped (not started yet, or stopped), starting, running, "
                                   "down (died or did not start; restarted at the next call)")
    starts: int
    last_error: str | None
    tools: int | None = Field(description="how many tools it listed; none before its start")
    retry_in_s: float | None = Field(description="when down: how long until a call may "
                                                 "start it again (back-off)")


class McpServersReply(BaseModel):
    servers: list[McpServerStatus]
    count: int


@dataclass
class PreExecuteContext:
    """What `ksi_tool_pre_execute` sees; it may change `arguments` in place."""
    name: str
    call_id: str
    request_id: str | None
    agent_id: str | None
    source: str
    arguments: dict


@dataclass
class PostExecuteContext:
    """What `ksi_tool_post_execute` sees; it may add entries to `annotations`."""
    name: str
    call_id: str
    request_id: str | None
    agent_id: str | None
    arguments: dict
    ok: bool
    result: Any
    error: dict | None
    annotations: dict = field(default_factory=dict)
