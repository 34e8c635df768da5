"""The baseline server: the least any line-JSON daemon must do per request, with nothing else.

    python bench/echo_server.py SOCKET_PATH

uvloop + asyncio.Protocol on a Unix socket: split lines, decode each with orjson, answer with a
reply-shaped object (type/event/correlation_id/data/timestamp) encoded with orjson, and write the
replies produced by one chunk of input with one write() -- the same batching the daemon does, so
the ratio measures the daemon's extra work and not a different I/O strategy. The reply data has
the shape and size of a `system:health` reply, so both servers put the same bytes on the wire.
Runs until SIGTERM/SIGINT; prints "ready" on stdout once it listens.
"""
from __future__ import annotations

import asyncio
import ctypes
import os
import signal
import sys
import time

import orjson
import uvloop

_loads = orjson.loads
_dumps = orjson.dumps
_now = time.time
_APPEND_NEWLINE = orjson.OPT_APPEND_NEWLINE
STARTED_AT = time.time()
PID = os.getpid()
# mallopt(3) parameters
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD_BYTES = 4 << 20  # what glibc itself sets once a 4 MiB block was freed


def keep_freed_memory() -> bool:
    """Keep freed heap memory in the process instead of handing it back to the kernel at once.

    A chunk's hundred encoded replies span a few hundred KB of heap while the chunk is answered.
    With glibc's starting thresholds (128 KiB) the free top of the heap goes back to the kernel
    after every chunk and is faulted in again, zeroed page by page, for the next one: about half
    this server's CPU. glibc raises those thresholds by itself once a process frees a large
    block, as the daemon's start-up does (it takes no page faults under this load), while a
    fresh echo server may or may not have: fixed here, the baseline costs the same in every run.
    False where there is no glibc.
    """
    try:
        libc = ctypes.CDLL(None)
        return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) and
                    libc.mallopt(M_TRIM_THRESHOLD, 2 * MMAP_THRESHOLD_BYTES))
    except (OSError, AttributeError):
        return False


class EchoConnection(asyncio.Protocol):
    connections = 0

    def __init__(self):
        self.transport: asyncio.Transport | None = None
        self.buffer = b""

    def connection_made(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        EchoConnection.connections += 1

    def connection_lost(self, exc: Exception | None) -> None:
        EchoConnection.connections -= 1

    def data_received(self, data: bytes) -> None:
        if self.buffer:
            data = self.buffer + data
        lines = data.split(b"\n")
        self.buffer = lines.pop()
        replies = []
        for line in lines:
            if not line:
                continue
            request = _loads(line)
            replies.append(_dumps(
                {"type": "reply", "event": request.get("event"),
                 "correlation_id": request.get("correlation_id"),
                 "data": {"status": "healthy", "uptime_s": round(_now() - STARTED_AT, 3),
                          "version": "0.1.0", "pid": PID,
                          "plugins": {"active": 10, "failed": 0, "degraded": 0},
                          "connections": EchoConnection.connections,
                          "failed_plugins": [], "degraded": []},
                 "timestamp": _now()},
                option=_APPEND_NEWLINE))
        if replies:
            self.transport.write(b"".join(replies))


async def serve(socket_path: str) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    if os.path.exists(socket_path):
        os.unlink(socket_path)
    server = await loop.create_unix_server(EchoConnection, socket_path)
    print("ready", flush=True)
    await stop.wait()
    server.close()
    os.unlink(socket_path)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python bench/echo_server.py SOCKET_PATH")
    keep_freed_memory()
    uvloop.run(serve(sys.argv[1]))
