"""KSI's answers in MCP's shapes: a tool as a listing, a reply or an error as a tool result.

A coded KSI error is a tool result with `isError` true, never a JSON-RPC error: the model that
called the tool must read what went wrong (a `validation_error` names the failing fields) and
can try again, where a protocol error would only tell the host that something broke.
"""
from __future__ import annotations

from typing import Any

import mcp_types as types
import orjson

from ksi_client import KSIError
from ksi_client.errors import CONNECTION_ERROR

from .catalog import Tool

UNAVAILABLE = "unavailable"


def listing_of(tool: Tool) -> types.Tool:
    annotations = types.ToolAnnotations(idempotent_hint=True) if tool.idempotent else None
    return types.Tool(name=tool.model_name, description=tool.description,
                      input_schema=dict(tool.parameters), annotations=annotations,
                      meta={"ksi/event": tool.event})


def result_of_reply(data: Any) -> types.CallToolResult:
    """The reply's data as structured content, and its JSON as text for hosts that read only
    text. Structured content must be an object: anything else is wrapped as {"result": ...}."""
    structured = data if isinstance(data, dict) else {"result": data}
    return types.CallToolResult(content=[_text(structured)], structured_content=structured)


def result_of_error(error: KSIError, socket_path: str) -> types.CallToolResult:
    """A KSI error as a failed tool result that carries its code, message and details (for a
    daemon that cannot be reached, `unavailable` and the socket path that was tried)."""
    code, details = code_of(error), error.details
    if error.code == CONNECTION_ERROR:
        details = {**(details if isinstance(details, dict) else {}), "socket_path": socket_path}
    body: dict[str, Any] = {"code": code, "message": error.message}
    if details is not None:
        body["details"] = details
    structured = {"error": body}
    return types.CallToolResult(content=[_text(structured)], structured_content=structured,
                                is_error=True)


def code_of(error: KSIError) -> str:
    """The daemon's code; for the client's own `connection_error` (no daemon behind the socket,
    or the connection lost) `unavailable`, the code the daemon gives when it cannot serve."""
    return UNAVAILABLE if error.code == CONNECTION_ERROR else error.code


def _text(value: Any) -> types.TextContent:
    # default=str: a reply is JSON already; this only guards against a value orjson refuses.
    return types.TextContent(text=orjson.dumps(value, default=str).decode())
