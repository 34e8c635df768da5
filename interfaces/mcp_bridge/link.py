"""The server's one connection to the daemon, made again whenever the daemon comes back.

An EventClient never reconnects by itself (the daemon forgets a connection's subscriptions when
it closes), so the link makes a new client when the last one was lost: at once for a tool call,
and every `retry_every_s` in `follow()`, which also hands the server the pushes it follows (the
events that may change the tool catalog, state changes). A call while no daemon listens fails
at once with KSIConnectionError (the message names the socket); it never waits for one.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from ksi_client import Event, EventClient, KSIConnectionError, KSIError
from ksi_client.event_client import compile_pattern
from ksi_client.socket_path import resolve_socket_path
from ksi_mcp.callers import Caller
from ksi_mcp.catalog import Tool

log = logging.getLogger("ksi.mcp")

RETRY_EVERY_S = 1.0   # a refused connect costs next to nothing, so try often
CONNECT_TIMEOUT_S = 5.0


class DaemonLink:
    """The `ksi_mcp.daemon.Daemon` of the stdio server: `request()` and `call_tool()` for the
    tools, `follow()` for what the server watches.

    `on_connected()` runs after every new connection (the daemon may have other plugins than
    the last one had); `on_push(event)` for every push matching `patterns`.
    """

    def __init__(self, socket_path: str | Path | None, *,
                 patterns: tuple[str, ...],
                 on_connected: Callable[[], Awaitable[None]],
                 on_push: Callable[[Event], Awaitable[None]],
                 retry_every_s: float = RETRY_EVERY_S):
        self.socket_path = resolve_socket_path(socket_path)
        self.patterns = patterns
        self._on_connected, self._on_push = on_connected, on_push
        self.retry_every_s = retry_every_s
        self._client: EventClient | None = None
        self._pushes = None  # the events() stream of the current client
        self._connecting = asyncio.Lock()
        self._said_unreachable = False  # warn once per outage, not once a second

    async def request(self, event: str, data: dict, timeout: float) -> Any:
        client = await self._connected_client()
        return await client.emit(event, data, timeout=timeout)

    async def call_tool(self, tool: Tool, arguments: dict, caller: Caller,
                        timeout: float) -> Any:
        # A client sends the event itself: its one caller is the host, which lends no agent's
        # identity (only the daemon's own plugins may claim one, with tools:execute).
        return await self.request(tool.event, arguments, timeout)

    async def follow(self) -> None:
        """Keep a connection while the server runs and hand it the pushes it follows. Runs
        until cancelled."""
        while True:
            try:
                await self._connected_client()
                await self._read_pushes()
            except KSIConnectionError:
                pass  # said by _connected_client; try again in a moment
            await asyncio.sleep(self.retry_every_s)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()

    async def _connected_client(self) -> EventClient:
        async with self._connecting:
            if self._client is not None and self._client.connected:
                return self._client
            if self._client is not None:
                await self._client.close()
                self._client = None
            client = EventClient(self.socket_path, timeout=CONNECT_TIMEOUT_S)
            try:
                await client.connect()
            except KSIConnectionError as exc:
                if not self._said_unreachable:
                    log.warning("%s", exc.message)
                    self._said_unreachable = True
                raise
            self._said_unreachable = False
            try:
                self._pushes = self._watch(client)
                for pattern in self.patterns:
                    await client.subscribe(pattern)
            except KSIConnectionError:
                await client.close()
                raise
            except KSIError as exc:  # a daemon that will not subscribe us still answers calls
                log.warning("cannot subscribe to %s (%s): the tool list is read again only "
                            "on tools/list, and no resource is announced as updated",
                            ", ".join(self.patterns), exc)
            self._client = client
            log.info("connected to the daemon at %s", self.socket_path)
        await self._on_connected()
        return client

    def _watch(self, client: EventClient):
        # One stream for every pattern; it also raises when the connection is lost, which is
        # how follow() notices the daemon went away.
        matchers = [compile_pattern(pattern) for pattern in self.patterns]
        return client.events("*", where=lambda event: any(m(event.event) for m in matchers))

    async def _read_pushes(self) -> None:
        async for event in self._pushes:
            await self._on_push(event)
        raise KSIConnectionError(f"the connection to the daemon at {self.socket_path} closed")
