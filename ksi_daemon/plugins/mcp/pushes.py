"""The pushes the MCP server follows (tool-list changes, state changes), received inside the
daemon by a connection of its own (the `Connection` of ksi_daemon/core/connection.py that
`system:subscribe` subscribes), so the plugin needs no socket and no internals.

The router writes each push as the line a socket client would read; the line is decoded here
and handed to the server in a task of its own, in the order the pushes came: the router must
not wait for an MCP notification to go out.
"""
from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable

import orjson

from ksi_client import Event

_numbers = itertools.count(1)


class PushInbox:
    def __init__(self, on_push: Callable[[Event], Awaitable[None]], log):
        self.id = f"mcp:{next(_numbers)}"
        self.peer_pid = self.peer_uid = None
        self.closed = False
        self.pushes_dropped = 0
        self.held: dict = {}
        self.grant = None  # (it sends no requests: only pushes come in)
        self._on_push, self._log = on_push, log
        self._queue: asyncio.Queue[Event] = asyncio.Queue()
        self._reader: asyncio.Task | None = None

    def start(self) -> None:
        self._reader = asyncio.get_running_loop().create_task(self._deliver(),
                                                              name="mcp-pushes")

    def close(self) -> None:
        self.closed = True  # the router skips a closed connection
        if self._reader is not None:
            self._reader.cancel()

    # ---- the Connection protocol: the router's side ---------------------------------------

    def push(self, line: bytes, correlation_id: str | None = None) -> bool:
        envelope = orjson.loads(line)
        self._queue.put_nowait(Event(envelope["event"], envelope.get("data"), correlation_id,
                                     envelope.get("timestamp")))
        return True

    def send(self, line: bytes) -> None:
        pass  # replies: none is owed here, every request of this connection is awaited

    def reply_owed(self) -> None:
        pass

    def reply_done(self, _finished=None) -> None:
        pass

    def buffered_bytes(self) -> int:
        return 0

    async def _deliver(self) -> None:
        while True:
            event = await self._queue.get()
            try:
                await self._on_push(event)
            except Exception as exc:  # noqa: BLE001 - one failed notification stops no other
                self._log.warning("mcp_push_failed", event=event.event, error=repr(exc))
