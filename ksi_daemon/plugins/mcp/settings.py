"""`plugins.mcp` in the daemon config, and the one rule about its address: loopback only."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from ...loopback import NotLoopback, loopback_address as checked_loopback

__all__ = ["McpSettings", "NotLoopback", "loopback_address"]


class McpSettings(BaseModel):
    model_config = ConfigDict(extra="ignore")  # `enabled`, `event_namespaces`: the manager's
    http: str | None = Field(None, description='"127.0.0.1:PORT": serve MCP over streamable '
                                               'HTTP there (PORT 0: any free port); off if unset')
    allow: list[str] = Field(default_factory=list,
                             description="the host's tools, as interfaces/mcp_server.py --allow")
    deny: list[str] = Field(default_factory=list, description="as --deny")
    call_timeout_s: float = Field(120.0, gt=0, le=3600,
                                  description="how long a tool call may take")


def loopback_address(address: str) -> tuple[str, int]:
    """`plugins.mcp.http` as (host, port) to bind: the endpoint lets whoever holds a token act
    on the daemon, so any host that is not a loopback address is refused (NotLoopback)."""
    return checked_loopback(address, "plugins.mcp.http", "the MCP endpoint")
