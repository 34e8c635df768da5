"""Unix-socket transport (PROTOCOL.md §1): the daemon's front door.

Opens its sockets (listeners.py: the main one, and those of `socket_dir` and `sockets`) after
every other plugin has started (so no request reaches a plugin that is not ready), closes the
listeners first at shutdown, and removes the sockets last. While it runs, socket_watch.py binds
again any socket whose file another program deleted or replaced.
"""
from __future__ import annotations

import asyncio
import os
import socket
import stat
from pathlib import Path

import structlog

from ...core.grants import GrantBook
from ...plugin_base import BasePlugin, hookimpl
from ...plugin_types import PluginCapabilities, PluginMetadata
from .connection import Connection
from .legacy_connection import LegacyCommandConnection
from .listeners import Listener, listeners_of
from .socket_watch import BoundSocket, clear_the_way, identity_of, keep_reachable, still_ours

log = structlog.get_logger("ksi.transport.unix")
CLOSE_GRACE_S = 2.0
SOMAXCONN_FILE = Path("/proc/sys/net/core/somaxconn")


class UnixTransport(BasePlugin):
    def __init__(self):
        super().__init__(
            PluginMetadata(name="transport_unix", version="0.1.0", priority=1000,
                           description="Newline-delimited JSON over a Unix stream socket"),
            # internals: it hands every line to the router itself
            PluginCapabilities(provides_services=["transport"], internals=True))
        self.servers: list[BoundSocket] = []
        self.connections: set[Connection] = set()
        self.serving = False  # True from the first bind until shutdown closes the listeners

    @hookimpl
    def ksi_startup(self, config):
        settings = config["daemon"]
        self.enabled = config["transports"]["unix"]["enabled"]
        self.check_interval_s = config["transports"]["unix"]["check_interval_s"]
        self.listeners = listeners_of(config)  # (a path that cannot be used fails the plugin)
        self.grants = GrantBook(config["permissions"])
        self.allowed_uids = {os.getuid(), *settings["allowed_uids"]}
        self.backlog = settings["listen_backlog"]
        self.limits = {key: settings[key] for key in
                       ("max_line_bytes", "output_buffer_bytes", "slow_consumer_grace_s")}

    @hookimpl
    async def ksi_ready(self, context):
        if not self.enabled:
            context.log.warning("unix_transport_disabled")
            return
        router = context.internals.router
        kernel_cap = kernel_backlog_cap()
        if kernel_cap is not None and kernel_cap < self.backlog:
            context.log.warning("listen_backlog_capped", configured=self.backlog,
                                somaxconn=kernel_cap,
                                fix="raise net.core.somaxconn (sysctl) to hold larger bursts")
        by_path = {}
        for listener in self.listeners:
            self.servers.append(await self._listen(listener, router))
            by_path[listener.path] = listener
            context.log.info("listening", socket=str(listener.path),
                             backlog=min(self.backlog, kernel_cap or self.backlog),
                             allow=list(listener.allow.patterns) if listener.allow else "*")

        async def rebind(bound: BoundSocket) -> BoundSocket:
            bound.server.close()  # unreachable by its path now; open connections stay
            clear_the_way(bound.path)
            return await self._listen(by_path[bound.path], router)

        self.serving = True
        return keep_reachable(self.servers, rebind, context.log, lambda: self.serving,
                              self.check_interval_s)

    async def _listen(self, listener: Listener, router) -> BoundSocket:
        listener.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        sock = bind_socket(listener.path)
        identity = identity_of(listener.path)
        speaks = LegacyCommandConnection if listener.legacy_commands else Connection
        # The loop calls listen() again with its own default backlog (100) unless told.
        server = await asyncio.get_running_loop().create_unix_server(
            lambda: speaks(router, self.limits, self.allowed_uids, self.connections,
                           lambda uid: self.grants.grant_for(uid, listener.allow)),
            sock=sock, backlog=self.backlog)
        return BoundSocket(listener.path, server, identity)

    @hookimpl
    def ksi_stopping(self):
        self.serving = False
        for bound in self.servers:
            bound.server.close()  # no new connections; open ones keep getting their replies

    @hookimpl
    async def ksi_shutdown(self):
        for conn in list(self.connections):
            # (what shutdown had read of each client: tests/test_ops_shutdown.py checks that
            # every line within it was answered)
            log.debug("connection_closing", connection=conn.id, bytes_read=conn.bytes_read)
            conn.close()  # flushes what is buffered, then closes
        loop = asyncio.get_running_loop()
        deadline = loop.time() + CLOSE_GRACE_S
        while self.connections and loop.time() < deadline:
            await asyncio.sleep(0.01)
        for conn in list(self.connections):
            # A client that does not read its replies loses them here, and the log says so.
            log.warning("connection_aborted_at_shutdown", connection=conn.id,
                        unsent_bytes=conn.transport.get_write_buffer_size(),
                        grace_s=CLOSE_GRACE_S)
            conn.transport.abort()
        for bound in self.servers:
            if still_ours(bound):  # never remove a file another program put at our path
                bound.path.unlink(missing_ok=True)


def bind_socket(path: Path) -> socket.socket:
    """Bind a listening socket at `path` with mode 0600, replacing a stale socket file.

    The caller holds the single-instance lock, so a socket file already there is a dead
    daemon's. Anything else at that path is left alone and reported.
    """
    if path.exists() or path.is_symlink():
        if not stat.S_ISSOCK(path.lstat().st_mode):
            raise RuntimeError(f"{path} exists and is not a socket; refusing to replace it")
        path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)  # the socket is born 0600: no window where others can connect
    try:
        sock.bind(str(path))
    finally:
        os.umask(old_umask)
    os.chmod(path, 0o600)
    sock.setblocking(False)
    return sock  # the loop's create_unix_server calls listen() with the configured backlog


def kernel_backlog_cap() -> int | None:
    """net.core.somaxconn: the kernel silently lowers any larger listen backlog to it."""
    try:
        return int(SOMAXCONN_FILE.read_text())
    except (OSError, ValueError):
        return None


ksi_plugin = UnixTransport
