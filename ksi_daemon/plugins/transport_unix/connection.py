"""One client connection: newline framing in, replies and pushes out, with bounded buffers.

asyncio.Protocol-level I/O: no StreamReader, no per-line task. Replies produced while a chunk of
input is being processed are written with one `write()` call: meanwhile `send` is the chunk's
batch's own `append`, so a reply costs no Python call of ours (a pipelined chunk holds a hundred).
"""
from __future__ import annotations

import asyncio
import itertools
import socket
import struct

import structlog

from ...core.held_pushes import hold_back
from ...core.protocol import (FORBIDDEN, PAYLOAD_TOO_LARGE, RATE_LIMITED, KSIError,
                              encode_error, encode_push)

log = structlog.get_logger("ksi.transport.unix")
_ids = itertools.count(1)
_PEERCRED = struct.Struct("3i")
# A disconnected slow consumer gets this long to read what is buffered and the notice after it;
# one that reads nothing is cut off then.
NOTICE_FLUSH_S = 5.0
# A refused peer gets this long to read its `forbidden` line and close; what it sends meanwhile
# is read and thrown away (closing with it unread would reset the connection before it reads).
REFUSED_LINGER_S = 2.0


def peer_credentials(transport: asyncio.Transport) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end, from the kernel (SO_PEERCRED)."""
    sock = transport.get_extra_info("socket")
    return _PEERCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                            _PEERCRED.size))


class Connection(asyncio.Protocol):
    """A Unix-socket client; implements `ksi_daemon.core.connection.Connection`."""

    def __init__(self, router, limits: dict, allowed_uids: set[int], registry: set,
                 grant_for=lambda uid: None):
        self.router, self.registry, self.allowed_uids = router, registry, allowed_uids
        self._grant_for = grant_for  # uid -> Grant | None, asked once the peer is known
        self.grant = None
        self.max_line = limits["max_line_bytes"]
        self.output_limit = limits["output_buffer_bytes"]
        self.grace_s = limits["slow_consumer_grace_s"]
        self.id = f"unix:{next(_ids)}"
        self.peer_pid = self.peer_uid = None
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.pushes_dropped = 0
        self.held: dict[str, list[bytes] | None] = {}
        self.pending = 0  # requests whose reply has not been written yet
        self.bytes_read = 0  # handed to the line splitter; logged when shutdown closes it
        self._eof = False
        self._buffer = bytearray()
        self._discarding = False  # inside an oversized line: skip up to the next newline
        self._grace_timer: asyncio.TimerHandle | None = None
        self.route_line = router.handle_line  # (control.sock's connections route their own)

    # ---- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.peer_pid, self.peer_uid, _gid = peer_credentials(transport)
        if self.peer_uid not in self.allowed_uids:
            log.warning("peer_forbidden", uid=self.peer_uid, pid=self.peer_pid)
            self.closed = True  # from here on data_received discards what the peer sends
            transport.write(encode_error(None, None, KSIError(
                FORBIDDEN, f"uid {self.peer_uid} may not use this daemon")))
            transport.write_eof()  # the line, then EOF; the peer's own EOF closes the rest
            self._grace_timer = asyncio.get_running_loop().call_later(
                REFUSED_LINGER_S, transport.abort)
            return
        self.id = f"unix:{self.id[5:]}:pid{self.peer_pid}"
        self.grant = self._grant_for(self.peer_uid)  # what its socket and uid allow, how fast
        self.registry.add(self)
        self.router.connection_opened(self)

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        self.bytes_read += len(data)
        if self._discarding:
            newline = data.find(b"\n")
            if newline < 0:
                return
            data = data[newline + 1:]
            self._discarding = False
        if self._buffer:
            self._buffer += data
            if data.find(b"\n") < 0:  # still inside one long line: no copy until it ends
                if len(self._buffer) > self.max_line:
                    self._buffer.clear()
                    self._too_large()
                    self._discarding = True
                return
            data = bytes(self._buffer)
            self._buffer.clear()
        batch = []
        self.send = self.batch_writer(batch)  # (this instance's, over the class's: module doc)
        handle_line, max_line = self.route_line, self.max_line
        try:
            lines = data.split(b"\n")  # in C: a pipelined chunk holds a hundred lines
            rest = lines.pop()
            if len(data) <= max_line:  # no line of this chunk can be too long
                for line in lines:
                    if line:  # (whitespace-only lines are the router's to ignore)
                        handle_line(line, self)
            else:
                for line in lines:
                    if len(line) > max_line:
                        self._too_large()
                    elif line:
                        handle_line(line, self)
            if len(rest) > max_line:
                self._too_large()
                self._discarding = True
            elif rest:
                self._buffer += rest
        finally:
            del self.send
            if batch and not self.closed:
                self.transport.write(b"".join(batch))

    def eof_received(self) -> bool:
        # `nc -N` and friends half-close after sending: still owe them their replies.
        self._eof = True
        return self.pending > 0  # True keeps the transport open until reply_done closes it

    def pause_writing(self) -> None:
        # The client is not reading its replies: stop reading its requests until it catches up.
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        if not self.closed:
            self.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._grace_timer is not None:
            self._grace_timer.cancel()
        self.registry.discard(self)
        self.router.connection_closed(self)

    # ---- what the router calls ---------------------------------------------------------------

    def send(self, line: bytes) -> None:
        """A reply: always written (reading pauses while the client does not read). While a
        chunk is handled, its batch's `append` stands in for this (data_received)."""
        if not self.closed:
            self.transport.write(line)

    def batch_writer(self, batch: list):
        """What stands in for `send` while a chunk is handled: the batch's own `append`."""
        return batch.append

    def push(self, line: bytes, correlation_id: str | None = None) -> bool:
        """A push: dropped while this connection's output is over its limit (slow consumer)."""
        if self.closed:
            return False
        if self.held and correlation_id in self.held:  # its request is not answered yet
            return hold_back(self, correlation_id, line)
        if self.transport.get_write_buffer_size() + len(line) > self.output_limit:
            self.pushes_dropped += 1
            if self._grace_timer is None:
                self._grace_timer = asyncio.get_running_loop().call_later(
                    self.grace_s, self._disconnect_if_still_slow)
            return False
        self.send(line)
        return True

    def reply_owed(self) -> None:
        self.pending += 1

    def reply_done(self, _finished=None) -> None:
        self.pending -= 1
        if self._eof and self.pending == 0:
            self.close()

    def buffered_bytes(self) -> int:
        return 0 if self.closed else self.transport.get_write_buffer_size()

    # ---- slow consumers and limits -----------------------------------------------------------

    def _disconnect_if_still_slow(self) -> None:
        self._grace_timer = None
        buffered = self.buffered_bytes()
        if self.closed or buffered <= self.output_limit // 2:
            return
        log.warning("slow_consumer_disconnected", connection=self.id,
                    pushes_dropped=self.pushes_dropped, buffered=buffered)
        self.closed = True
        # After what is buffered (whole lines), one coded notice, then EOF: the client learns
        # why. The router forgets it now, not when the flush ends.
        self.transport.write(encode_push("system:disconnected", {
            "code": RATE_LIMITED, "message": "disconnected: this connection does not read "
            f"its pushes ({buffered} bytes still unread {self.grace_s} s after pushes were "
            f"first dropped at {self.output_limit})", "pushes_dropped": self.pushes_dropped},
            None))
        self.transport.close()
        self.router.connection_closed(self)
        self._grace_timer = asyncio.get_running_loop().call_later(
            NOTICE_FLUSH_S, self.transport.abort)

    def _too_large(self) -> None:
        self.send(encode_error(None, None, KSIError(
            PAYLOAD_TOO_LARGE, f"request line exceeds {self.max_line} bytes; it was discarded")))

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.transport.close()
