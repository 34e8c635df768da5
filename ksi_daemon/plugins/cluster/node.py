"""The node's one connection to NATS: connected, lost, back; what health says of it.

Owned by the cluster plugin; everything that uses NATS in this daemon goes through it. Users of
the connection register as a `ClusterListener`: `cluster_up(js)` after every (re)connection with
JetStream answering, `cluster_down()` as soon as the connection is lost. nats-py is imported
here only, when a node starts: a single daemon never loads it.
"""
from __future__ import annotations

import asyncio
import time
from typing import Protocol

import structlog

from .connect_options import connect_options

RETRY_CONNECT_EVERY_S = 1.0
log = structlog.get_logger("ksi.plugin.cluster")


class ClusterListener(Protocol):
    async def cluster_up(self, js) -> None:
        """NATS and JetStream answer (again): set up, reconcile, then serve."""

    def cluster_down(self) -> None:
        """The connection is gone: answer `unavailable` from now on."""


class ClusterNode:
    def __init__(self, settings: dict, report_degraded):
        self.settings = settings
        self.node_id, self.nats_url = settings["node_id"], settings["nats_url"]
        self.report_degraded = report_degraded
        self.listeners: list[ClusterListener] = []
        self.nc = None
        self.reachable = False  # the TCP connection to a NATS server is up
        self.jetstream_ok = False  # and JetStream answered, and every listener is set up
        self.since = time.time()
        self.last_error: str | None = "not connected yet"
        self._coming_up: asyncio.Task | None = None

    def listen(self, listener: ClusterListener) -> None:
        self.listeners.append(listener)

    def health(self) -> dict:
        """What `system:health` shows as `cluster` (no I/O: the state as last seen)."""
        return {"node_id": self.node_id, "nats_url": self.nats_url,
                "reachable": self.reachable, "jetstream": self.jetstream_ok,
                "since": round(self.since, 3), "error": self.last_error}

    async def run(self) -> None:
        """Connect (retrying until it works), then let nats-py reconnect after any loss."""
        import nats  # lazily: only a node of a cluster needs it
        while self.nc is None:
            try:
                self.nc = await nats.connect(
                    **connect_options(self.settings), error_cb=self._error,
                    disconnected_cb=self._disconnected, reconnected_cb=self._reconnected)
            except Exception as exc:  # noqa: BLE001 - refused, timed out, bad credentials
                self._note_down(f"cannot connect to {self.nats_url}: {exc!r}")
                await asyncio.sleep(RETRY_CONNECT_EVERY_S)
        await self._came_up()
        await asyncio.Event().wait()  # nats-py's own tasks keep the connection from here on

    async def close(self) -> None:
        if self._coming_up is not None:
            self._coming_up.cancel()
        if self.nc is not None and not self.nc.is_closed:
            try:
                await asyncio.wait_for(self.nc.close(), self.settings["request_timeout_s"])
            except (Exception, asyncio.TimeoutError):  # noqa: BLE001 - closing anyway
                pass

    # ---- what nats-py tells us ---------------------------------------------------------------

    async def _error(self, exc) -> None:
        log.warning("nats_error", error=repr(exc))
        self.last_error = repr(exc)

    async def _disconnected(self) -> None:
        self._note_down(f"lost the connection to {self.nats_url}")

    async def _reconnected(self) -> None:
        log.info("nats_reconnected", url=self.nc.connected_url.geturl())
        if self._coming_up is None or self._coming_up.done():
            self._coming_up = asyncio.ensure_future(self._came_up())

    # ---- up and down -------------------------------------------------------------------------

    def _note_down(self, why: str) -> None:
        if self.reachable or self.jetstream_ok or self.last_error != why:
            log.warning("cluster_unreachable", reason=why)
        self.reachable = self.jetstream_ok = False
        self.since, self.last_error = time.time(), why
        for listener in self.listeners:
            listener.cluster_down()
        self.report_degraded(f"cluster: {why}")

    async def _came_up(self) -> None:
        """Connected: check JetStream and let every listener set up; retried until it works."""
        self.reachable = True
        js = self.nc.jetstream(timeout=self.settings["request_timeout_s"])
        while self.nc.is_connected:
            step = "account info"
            try:
                await js.account_info()
                for listener in self.listeners:
                    step = type(listener).__name__  # named in the error: which store is stuck
                    await listener.cluster_up(js)
            except Exception as exc:  # noqa: BLE001 - JetStream off, not ready, timed out
                self.jetstream_ok, self.last_error = False, f"JetStream ({step}): {exc!r}"
                self.report_degraded(f"cluster: {self.last_error}")
                log.warning("cluster_jetstream_unusable", error=repr(exc))
                await asyncio.sleep(RETRY_CONNECT_EVERY_S)
                continue
            self.jetstream_ok, self.since, self.last_error = True, time.time(), None
            self.report_degraded(None)
            log.info("cluster_up", node_id=self.node_id, url=self.nats_url)
            return
