"""Connecting to a Unix socket whose listen backlog may be full for a moment.

When more clients connect at once than the daemon's listen backlog holds, the kernel refuses a
non-blocking connect with EAGAIN (on a Unix socket it never waits, unlike TCP's SYN queue). The
daemon drains its backlog in microseconds, so trying again shortly nearly always succeeds. The
event loops do not do this for us: uvloop reports EAGAIN as a failure, and the standard loop
takes it for "in progress" and hands back a socket that was never connected (its first write
fails with EINVAL). So the socket is connected here and only then given to the loop.
"""
from __future__ import annotations

import asyncio
import socket

FIRST_PAUSE_S = 0.001
LONGEST_PAUSE_S = 0.05


class BacklogStayedFull(OSError):
    """Every connect within the allowed time found the daemon's listen backlog full."""


async def connect_unix_socket(path: str, retry_for_s: float) -> socket.socket:
    """A non-blocking socket connected to `path`, trying again for up to `retry_for_s` seconds
    while the listen backlog is full. Other errors (no such file, refused, permission) are
    raised at once: waiting would not fix them."""
    loop = asyncio.get_running_loop()
    give_up_at = loop.time() + retry_for_s
    pause = FIRST_PAUSE_S
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            sock.connect(path)
            return sock
        except BlockingIOError:
            sock.close()
        except BaseException:
            sock.close()
            raise
        if loop.time() + pause > give_up_at:
            raise BacklogStayedFull(f"its listen backlog stayed full for {retry_for_s:g} s")
        await asyncio.sleep(pause)
        pause = min(pause * 2, LONGEST_PAUSE_S)
