"""`plugins.mcp` in the daemon config, and the one rule about its address: loopback only."""
from __future__ import annotations

import ipaddress

from pydantic import BaseModel, ConfigDict, Field


class McpSettings(BaseModel):
    model_config = ConfigDict(extra="ignore")  # `enabled`, `event_namespaces`: the manager's
    http: str | None = Field(None, description='"127.0.0.1:PORT": serve MCP over streamable '
                                               'HTTP there (PORT 0: any free port); off if unset')
    allow: list[str] = Field(default_factory=list,
                             description="the host's tools, as interfaces/mcp_server.py --allow")
    deny: list[str] = Field(default_factory=list, description="as --deny")
    call_timeout_s: float = Field(120.0, gt=0, le=3600,
                                  description="how long a tool call may take")


class NotLoopback(ValueError):
    """An address the endpoint refuses to listen on."""


def loopback_address(address: str) -> tuple[str, int]:
    """`127.0.0.1:8765`, `[::1]:8765` or `localhost:8765` as (host, port) to bind.

    The endpoint lets whoever holds a token act on the daemon, so it never listens where
    another machine could reach it: any host that is not a loopback address is refused.
    """
    host, separator, port_text = address.rpartition(":")
    if not separator or not port_text.isdigit() or int(port_text) > 65535:
        raise NotLoopback(f"plugins.mcp.http is {address!r}: expected \"127.0.0.1:PORT\"")
    host = host.removeprefix("[").removesuffix("]")
    if host == "localhost":
        host = "127.0.0.1"  # what `localhost` resolves to is the resolver's, not ours, to say
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise NotLoopback(f"plugins.mcp.http is {address!r}: the MCP endpoint listens on "
                          "loopback only (127.0.0.1, ::1 or localhost), never on an address "
                          "other machines can reach")
    return host, int(port_text)
