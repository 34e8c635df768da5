"""One subscribed connection to the daemon, made again whenever the daemon comes back.

An EventClient never reconnects by itself (the daemon forgets a connection's subscriptions when
it closes), so the link makes a new client for every attempt and subscribes it to `*` again.
It reports what happens to a listener (the app) through plain method calls on the same event
loop; it never touches the screen.
"""
from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Protocol

from ksi_client import Event, EventClient, KSIConnectionError, KSIError
from ksi_client.socket_path import resolve_socket_path

RETRY_EVERY_S = 1.0      # a refused connect costs next to nothing, so try often
METRICS_EVERY_S = 2.0
CALL_TIMEOUT_S = 5.0


class Listener(Protocol):
    def daemon_connected(self, socket_path: Path) -> None: ...
    def daemon_unreachable(self, message: str, was_connected: bool) -> None: ...
    def daemon_event(self, event: Event) -> None: ...
    def daemon_agents(self, agents: list[dict] | None, problem: str) -> None: ...
    def daemon_metrics(self, metrics: dict | None, problem: str) -> None: ...


class DaemonLink:
    def __init__(self, socket_path: str | Path | None, listener: Listener, *,
                 retry_every_s: float = RETRY_EVERY_S, metrics_every_s: float = METRICS_EVERY_S):
        self.listener = listener
        self.retry_every_s = retry_every_s
        self.metrics_every_s = metrics_every_s
        self._subscribed = False
        self.socket_path = resolve_socket_path(socket_path)  # found once, as the client does

    async def run(self) -> None:
        """Connect, follow the daemon until it goes away, and start over, until cancelled."""
        was_connected = False
        while True:
            client = EventClient(self.socket_path, timeout=CALL_TIMEOUT_S)
            try:
                await client.connect()
            except KSIConnectionError as exc:
                self.listener.daemon_unreachable(exc.message, was_connected)
                await asyncio.sleep(self.retry_every_s)
                continue
            self._subscribed = False
            try:
                await self._follow(client)
                reason = "the connection was closed"
            except KSIError as exc:
                # Lost, or a daemon that cannot serve us now (shutting down, hung): start over.
                reason = exc.message
            finally:
                await client.close()
            # A daemon that refuses us (`forbidden`) before the subscription never "went away".
            was_connected = was_connected or self._subscribed
            self.listener.daemon_unreachable(reason, was_connected)
            await asyncio.sleep(self.retry_every_s)

    async def _follow(self, client: EventClient) -> None:
        # The stream exists before the subscription so no push between the two is missed; it
        # raises KSIConnectionError when the daemon goes away, which is how the loss is noticed.
        stream = client.events("*")
        await client.subscribe("*")
        self._subscribed = True
        self.listener.daemon_connected(self.socket_path)
        await self._read_agents(client)
        poller = asyncio.create_task(self._poll(client))
        try:
            async for event in stream:
                self.listener.daemon_event(event)
        finally:
            poller.cancel()

    async def _read_agents(self, client: EventClient) -> None:
        try:
            reply = await client.emit("agent:list")
        except KSIConnectionError:
            raise
        except KSIError as exc:
            # No agent plugin (or a failed one) must not stop the rest of the monitor.
            self.listener.daemon_agents(None, f"agent:list failed: {exc.code}: {exc.message}")
            return
        self.listener.daemon_agents(list(reply.get("agents") or []), "")

    async def _poll(self, client: EventClient) -> None:
        """The figures, and the agent list again: pushes keep the table current, the list
        brings the counts pushes do not carry and repairs anything a dropped push missed."""
        while True:
            await asyncio.sleep(self.metrics_every_s)
            try:
                self.listener.daemon_metrics(await client.emit("system:metrics"), "")
                await self._read_agents(client)
            except KSIConnectionError:
                return  # the event stream reports the loss
            except KSIError as exc:
                self.listener.daemon_metrics(None, f"system:metrics: {exc.code}")
