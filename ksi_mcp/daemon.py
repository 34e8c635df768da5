"""The seam between an MCP server and the daemon, declared once for both servers."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from .callers import Caller
from .catalog import Tool


class Daemon(Protocol):
    """What the MCP server needs of the daemon (tests may hand it anything that does this).

    interfaces/mcp_bridge/link.py does it as a socket client; the `mcp` plugin through its
    plugin context. Errors are `ksi_client` errors whichever it is.
    """
    socket_path: Path  # named in the error of a call no daemon answered

    async def request(self, event: str, data: dict, timeout: float) -> Any:
        """The reply's data, or a KSIError (KSIConnectionError when no daemon answers)."""

    async def call_tool(self, tool: Tool, arguments: dict, caller: Caller,
                        timeout: float) -> Any:
        """Run `tool` for `caller` (with its agent's identity, if any): the reply's data, or a
        KSIError carrying the code the tool failed with."""
