"""What a profile's `mcp_servers` may say: a stdio command or a streamable-HTTP URL on loopback.

    mcp_servers:
      docs: {command: python, args: [docs_server.py], env: {DOCS_ROOT: /srv/docs}}
      search: {url: "http://127.0.0.1:8765/mcp"}

A server's name is its tools' prefix (docs/TOOLS.md, "MCP tool servers"), so it is kept to
letters, digits and "-": the model name `docs__search` then splits back at its first "__"
without doubt. Unknown keys are refused, as everywhere in KSI, so a typo is a validation_error
at spawn instead of a server started without what was meant.
"""
from __future__ import annotations

import ipaddress
from typing import Annotated, Union
from urllib.parse import urlsplit

from pydantic import (BaseModel, ConfigDict, Discriminator, Field, StringConstraints, Tag,
                      field_validator)

SERVER_NAME = r"^[A-Za-z0-9][A-Za-z0-9-]{0,31}$"
ServerName = Annotated[str, StringConstraints(pattern=SERVER_NAME)]
LOOPBACK_NAMES = frozenset({"localhost"})


class StdioServer(BaseModel):
    """A server the daemon runs as its child and speaks to over stdin/stdout."""
    model_config = ConfigDict(extra="forbid", frozen=True)
    command: str = Field(min_length=1, max_length=4096, description="the program to run")
    args: tuple[str, ...] = Field((), max_length=256)
    env: dict[str, str] = Field(default_factory=dict, max_length=256,
                                description="added to a minimal environment (HOME, PATH, ...)")
    cwd: str | None = Field(None, max_length=4096, description="default: the daemon's")

    @property
    def transport(self) -> str:
        return "stdio"


class HttpServer(BaseModel):
    """A server already running on this machine, reached over streamable HTTP."""
    model_config = ConfigDict(extra="forbid", frozen=True)
    url: str = Field(max_length=2048, description="http(s)://127.0.0.1|[::1]|localhost:PORT/...")

    @field_validator("url")
    @classmethod
    def on_loopback(cls, url: str) -> str:
        # A profile must not make the daemon send an agent's tool calls off the machine.
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("an MCP server URL is http:// or https:// with a host")
        if not is_loopback(parts.hostname):
            raise ValueError(f"an MCP server URL must be on loopback (127.0.0.1, [::1], "
                             f"localhost), not {parts.hostname}")
        return url

    @property
    def transport(self) -> str:
        return "http"


def is_loopback(host: str) -> bool:
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _transport_of(value) -> str:
    # A `url` says HTTP, anything else is a command: one schema's errors, not both's.
    if isinstance(value, dict):
        return "http" if "url" in value else "stdio"
    return getattr(value, "transport", "stdio")


ServerConfig = Annotated[Union[Annotated[StdioServer, Tag("stdio")],
                               Annotated[HttpServer, Tag("http")]],
                         Discriminator(_transport_of)]
ServerConfigs = Annotated[dict[ServerName, ServerConfig], Field(max_length=16)]


class McpSettings(BaseModel):
    """`plugins.tools.mcp` in the daemon config."""
    model_config = ConfigDict(extra="forbid")
    start_timeout_s: float = Field(10.0, gt=0, le=600,
                                   description="a server not through the MCP handshake by "
                                               "then is stopped and counted down")
    call_timeout_s: float = Field(30.0, gt=0, le=3600, description="each tool call's timeout")
    backoff_s: float = Field(1.0, gt=0, description="the wait after the first failed start; "
                                                    "doubled after each further one")
    backoff_max_s: float = Field(30.0, gt=0)
