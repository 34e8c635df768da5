"""A connection held in memory, to drive a `Router` in-process (the tests' harness).

    conn = MemoryConnection(router)              # registered with the router, like an accept
    conn.send_line(b'{"event": "system:health"}')  # a raw request line (bytes or str, no newline)
    cid = conn.request("state:set", {"key": "k", "value": 1})   # builds the line, returns its id
    reply = await conn.reply_to(cid)             # that reply, decoded (waits, 5 s by default)
    reply = await conn.ask("state:get", {"key": "k"})          # request + reply_to in one
    conn.received                                # every line received, decoded, in order
    conn.replies, conn.pushes                    # the same, split by "type"
    conn.lines                                   # the raw bytes, as a transport would write them
    conn.eof()                                   # the client half-closes (closed once answered)
    conn.close()                                 # the client goes away

Everything the router sends is decoded when it arrives, so a test sees exactly what a socket
client would read. It implements `ksi_daemon.core.connection.Connection`.
"""
from __future__ import annotations

import asyncio
import itertools
import os
from typing import Any

import orjson

from .held_pushes import hold_back
from .protocol import new_correlation_id

_numbers = itertools.count(1)


class MemoryConnection:
    def __init__(self, router, *, peer_pid: int | None = None, peer_uid: int | None = None):
        self.router = router
        self.id = f"memory:{next(_numbers)}"
        # the client is this process unless the test says otherwise
        self.peer_pid = os.getpid() if peer_pid is None else peer_pid
        self.peer_uid = os.getuid() if peer_uid is None else peer_uid
        self.closed = False
        self.pushes_dropped = 0
        self.held: dict[str, list[bytes] | None] = {}
        self.grant = None
        self.pending = 0  # replies owed to this connection
        self.lines: list[bytes] = []
        self.received: list[dict] = []
        self.replies: list[dict] = []
        self.pushes: list[dict] = []
        self._eof = False
        self._replies_by_id: dict[str, dict] = {}
        self._waiting: dict[str, asyncio.Future] = {}
        router.connection_opened(self)

    # ---- the client's side -------------------------------------------------------------------

    def send_line(self, line: bytes | str) -> None:
        """Hand one request line to the router, as a transport does for each line it reads."""
        self.router.handle_line(line.encode() if isinstance(line, str) else line, self)

    def request(self, event: str, data: dict | None = None,
                correlation_id: str | None = None) -> str:
        """Send a request envelope; return its correlation id (generated when not given)."""
        cid = correlation_id or new_correlation_id()
        envelope: dict[str, Any] = {"event": event, "correlation_id": cid}
        if data is not None:
            envelope["data"] = data
        self.send_line(orjson.dumps(envelope))
        return cid

    async def reply_to(self, correlation_id: str, timeout: float = 5.0) -> dict:
        """The reply carrying `correlation_id`, waiting for it up to `timeout` seconds."""
        reply = self._replies_by_id.get(correlation_id)
        if reply is not None:
            return reply
        waiter = self._waiting.get(correlation_id)
        if waiter is None:
            waiter = self._waiting[correlation_id] = \
                asyncio.get_running_loop().create_future()
        return await asyncio.wait_for(asyncio.shield(waiter), timeout)

    async def ask(self, event: str, data: dict | None = None, timeout: float = 5.0) -> dict:
        """Send a request and return its reply."""
        return await self.reply_to(self.request(event, data), timeout)

    def eof(self) -> None:
        """The client stops sending (as `nc -N` does): closed once every owed reply is out."""
        self._eof = True
        if self.pending == 0:
            self.close()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.router.connection_closed(self)

    # ---- the Connection contract (what the router calls) -------------------------------------

    def send(self, line: bytes) -> None:
        if self.closed:
            return
        self.lines.append(line)
        message = orjson.loads(line)
        self.received.append(message)
        if message.get("type") == "reply":
            self.replies.append(message)
            cid = message.get("correlation_id")
            self._replies_by_id[cid] = message
            waiter = self._waiting.pop(cid, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(message)
        else:
            self.pushes.append(message)

    def push(self, line: bytes, correlation_id: str | None = None) -> bool:
        if self.held and correlation_id in self.held:
            return hold_back(self, correlation_id, line)
        self.send(line)
        return not self.closed

    def reply_owed(self) -> None:
        self.pending += 1

    def reply_done(self, _finished: Any = None) -> None:
        self.pending -= 1
        if self._eof and self.pending == 0:
            self.close()

    def buffered_bytes(self) -> int:
        return 0  # everything sent is taken at once
