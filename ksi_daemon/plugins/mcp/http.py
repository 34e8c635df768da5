"""The streamable-HTTP endpoint: the MCP SDK's session manager behind bearer-token auth, served
by uvicorn on a loopback socket the plugin bound itself.

    POST/GET/DELETE http://127.0.0.1:PORT/mcp     Authorization: Bearer <token>

Built from the SDK's own parts (its session manager, ASGI app, bearer backend and
require-auth middleware; DNS-rebinding protection for loopback hosts), so every protocol
version the SDK serves is served here. uvicorn runs inside the daemon's loop: its signal
handlers are left out (SIGTERM is the daemon's), and so are its logging set-up and ASGI
lifespan (the session manager's lifetime is this module's).
"""
from __future__ import annotations

import asyncio
import contextlib
import socket

import uvicorn
from mcp.server.auth.middleware.auth_context import AuthContextMiddleware
from mcp.server.auth.middleware.bearer_auth import (AuthenticatedUser, BearerAuthBackend,
                                                    RequireAuthMiddleware)
from mcp.server.streamable_http_manager import (StreamableHTTPASGIApp,
                                                StreamableHTTPSessionManager)
from mcp.server.transport_security import TransportSecuritySettings
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.routing import Route

from ksi_mcp.callers import NOBODY, Caller
from ksi_mcp.server import ToolServer

from .tokens import TokenBook

PATH = "/mcp"
STOP_GRACE_S = 2.0  # for open responses once the sessions are gone, then they are cut


def bind_loopback(host: str, port: int) -> socket.socket:
    """The listening socket, bound now so a taken port fails the plugin at start, clearly."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.listen(128)
    sock.setblocking(False)
    return sock


def caller_of(book: TokenBook):
    """`ToolServer.caller_of` for HTTP: the holder of the token the request was let in with."""
    def caller(ctx) -> Caller:
        user = ctx.request.scope.get("user") if ctx.request is not None else None
        holder = book.holder_of(user.access_token.token) \
            if isinstance(user, AuthenticatedUser) else None
        return holder.caller if holder is not None else NOBODY
    return caller


class _InsideTheDaemon(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self):
        yield  # SIGTERM and SIGINT stop the daemon, which stops this server


class HttpEndpoint:
    def __init__(self, server: ToolServer, book: TokenBook, sock: socket.socket):
        self.sock = sock
        host, self.port = sock.getsockname()[:2]
        self.url = f"http://{f'[{host}]' if ':' in host else host}:{self.port}{PATH}"
        self.sessions = StreamableHTTPSessionManager(
            app=server.mcp, security_settings=TransportSecuritySettings(
                allowed_hosts=["127.0.0.1:*", "localhost:*", "[::1]:*"],
                allowed_origins=["http://127.0.0.1:*", "http://localhost:*", "http://[::1]:*"]))
        app = Starlette(
            routes=[Route(PATH, endpoint=RequireAuthMiddleware(
                StreamableHTTPASGIApp(self.sessions), required_scopes=[]))],
            middleware=[Middleware(AuthenticationMiddleware, backend=BearerAuthBackend(book)),
                        Middleware(AuthContextMiddleware)])
        self.http = _InsideTheDaemon(uvicorn.Config(
            app, lifespan="off", log_config=None, access_log=False, proxy_headers=False,
            server_header=False, timeout_graceful_shutdown=STOP_GRACE_S))
        self._stopping = asyncio.Event()

    def stop(self) -> None:
        """Stop taking requests: the sessions end, then the listener and connections close."""
        self._stopping.set()

    async def serve(self) -> None:
        """Runs until stop() (or cancellation); a crash of the server is raised, which fails
        the plugin."""
        serving: asyncio.Future | None = None
        try:
            async with self.sessions.run():
                serving = asyncio.ensure_future(self.http.serve(sockets=[self.sock]))
                stopping = asyncio.ensure_future(self._stopping.wait())
                try:
                    await asyncio.wait({serving, stopping}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    stopping.cancel()
            # Leaving run() ended every session: their open streams close, so uvicorn's
            # shutdown below has no response left to wait out.
        finally:
            self.http.should_exit = True
            if serving is not None:
                await self._finish(serving)
            self.sock.close()

    async def _finish(self, serving: asyncio.Future) -> None:
        done, _ = await asyncio.wait({serving}, timeout=STOP_GRACE_S + 1.0)
        if not done:
            serving.cancel()
            await asyncio.wait({serving})
        elif not serving.cancelled() and serving.exception() is not None:
            raise serving.exception()
