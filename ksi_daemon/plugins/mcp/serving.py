"""The endpoint's moving parts, put together when `plugins.mcp.http` is set.

A module of its own so that a daemon with the endpoint off (the default) never imports the MCP
SDK, starlette and uvicorn: about 0.45 s of every start-up.
"""
from __future__ import annotations

from pathlib import Path

from ksi_mcp.callers import Caller
from ksi_mcp.catalog import Exposure
from ksi_mcp.server import FOLLOWED, ToolServer

from .http import HttpEndpoint, bind_loopback, caller_of
from .in_daemon import EventsThroughContext
from .pushes import PushInbox
from .tokens import TokenBook


class Serving:
    """The listening socket, the tool server, the token book and the push inbox of one run."""

    def __init__(self, context, settings, address: tuple, socket_path: Path, version: str):
        sock = bind_loopback(*address)  # a port in use fails the plugin, nothing else
        self.book = TokenBook()
        self.host = Caller(Exposure(tuple(settings.allow), tuple(settings.deny)))
        self.server = ToolServer(EventsThroughContext(context, socket_path), self.host.exposure,
                                 call_timeout_s=settings.call_timeout_s, version=version,
                                 caller_of=caller_of(self.book), events_only=False)
        self.endpoint = HttpEndpoint(self.server, self.book, sock)
        self.inbox = PushInbox(self.server.on_push, context.log)

    async def follow(self, context) -> None:
        """Subscribe to what changes the tool catalog and resources, and read the catalog."""
        self.inbox.start()
        await context.emit("system:subscribe", {"patterns": list(FOLLOWED)},
                           connection=self.inbox)
        await self.server.refresh_catalog(tell_hosts=False)
