"""KSI's things as MCP resources: a URI names one event request, its reply is the content.

    ksi://state/{namespace}/{key}     state:get          the value, as JSON
    ksi://conversation/{session_id}   conversation:get   the session and its messages
    ksi://agent/{agent_id}            agent:info         the agent's record and recent turns

Segments are percent-encoded (a key may hold `/`). Pure: the server sends the request.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable
from urllib.parse import quote, unquote, urlsplit

import mcp_types as types

SCHEME = "ksi"
JSON = "application/json"
MISSING = object()  # what a reply holds when the thing named does not exist


@dataclass(frozen=True, slots=True)
class Kind:
    host: str
    segments: tuple[str, ...]
    event: str
    description: str
    content: Callable[[dict], Any]  # the part of the reply a reader wants


KINDS = {kind.host: kind for kind in (
    Kind("state", ("namespace", "key"), "state:get",
         "A state key's value (JSON); not found when the key does not exist.",
         lambda reply: reply["value"] if reply.get("found") else MISSING),
    Kind("conversation", ("session_id",), "conversation:get",
         "A conversation: its session and messages.", lambda reply: reply),
    Kind("agent", ("agent_id",), "agent:info",
         "An agent: its record, model, status and recent turns.", lambda reply: reply),
)}


@dataclass(frozen=True, slots=True)
class Request:
    kind: Kind
    data: dict[str, str]


def templates() -> list[types.ResourceTemplate]:
    return [types.ResourceTemplate(
        name=kind.host, uri_template=f"{SCHEME}://{kind.host}/"
        + "/".join("{" + segment + "}" for segment in kind.segments),
        description=kind.description, mime_type=JSON) for kind in KINDS.values()]


def request_for(uri: str) -> Request | None:
    """The event request a URI names, or None when it names nothing this server knows."""
    parts = urlsplit(uri)
    kind = KINDS.get(parts.netloc) if parts.scheme == SCHEME else None
    if kind is None:
        return None
    values = [unquote(value) for value in parts.path.removeprefix("/").split("/")]
    if len(values) != len(kind.segments) or not all(values):
        return None
    return Request(kind, dict(zip(kind.segments, values)))


def uri_of(host: str, *values: str) -> str:
    return f"{SCHEME}://{host}/" + "/".join(quote(value, safe="") for value in values)
