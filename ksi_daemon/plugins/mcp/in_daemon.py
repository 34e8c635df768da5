"""The MCP server's `Daemon` (ksi_mcp/daemon.py) inside the daemon: events through the plugin's
context instead of a socket.

Tool calls go through `tools:execute`, the one place where a call runs with an agent's
identity (its `sender`), the tool hooks and the permission check; a failed tool comes back as
the KSI error it failed with. Errors are raised as `ksi_client` errors, which the shared MCP
server reads.
"""
from __future__ import annotations

import asyncio
import itertools
from pathlib import Path
from typing import Any

from ksi_client import KSIError as ClientError
from ksi_mcp.callers import Caller
from ksi_mcp.catalog import Tool

from ...protocol import TIMEOUT, KSIError

EXECUTE_GRACE_S = 5.0  # tools:execute enforces the call's own timeout; this is for the rest


class EventsThroughContext:
    def __init__(self, context, socket_path: Path):
        self.context = context
        self.socket_path = socket_path  # the daemon's own: named only if a call is refused
        self._calls = itertools.count(1)

    async def request(self, event: str, data: dict, timeout: float) -> Any:
        try:
            return await asyncio.wait_for(self.context.emit(event, data), timeout)
        except KSIError as error:
            raise ClientError(error.code, error.message, error.details) from None
        except TimeoutError:
            raise ClientError(TIMEOUT, f"{event} did not answer within {timeout:g} s") from None

    async def call_tool(self, tool: Tool, arguments: dict, caller: Caller,
                        timeout: float) -> Any:
        result = await self.request("tools:execute", {
            "name": tool.event, "arguments": arguments, "call_id": f"mcp-{next(self._calls)}",
            "agent_id": caller.agent_id, "timeout_s": timeout}, timeout + EXECUTE_GRACE_S)
        if result["ok"]:
            return result["result"]
        error = result["error"]
        raise ClientError(error["code"], error["message"], error.get("details"))
