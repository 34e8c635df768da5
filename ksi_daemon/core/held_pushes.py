"""Pushes that wait for their request's reply (PROTOCOL.md §1, "the reply comes first").

A client that matches lines by correlation id takes the first line carrying its request's id
for the reply. So while a request of a connection is unanswered, that connection's pushes
carrying the request's id wait in `connection.held[correlation_id]` (None until the first one),
and go out right after the reply line, in the order they were pushed:

    router       conn.held.setdefault(cid, None)   when it starts a request that could push
    conn.push    hold_back(conn, cid, line)        for a line whose id is held
    ReplyPath    release(conn, cid, held lines)    after the reply line, error or not

Only the connection the request came from waits, and only for lines with that id; a connection
with nothing held pays one test of an empty dict per push and per reply. What one request holds
is bounded: past MAX_HELD lines (a request that pushes without end before answering, or an owed
reply never settled) they are released and its pushes go out as they come.
"""
from __future__ import annotations

import structlog

log = structlog.get_logger("ksi.reply")
MAX_HELD = 1000


def hold_back(conn, correlation_id: str, line: bytes) -> bool:
    """Keep `line` until the reply to `correlation_id` is sent; True, as for a queued push."""
    lines = conn.held[correlation_id]
    if lines is None:
        conn.held[correlation_id] = [line]
    elif len(lines) < MAX_HELD:
        lines.append(line)
    else:
        log.warning("held_pushes_released_unanswered", connection=conn.id,
                    correlation_id=correlation_id, held=len(lines))
        release(conn, correlation_id, conn.held.pop(correlation_id))
        return conn.push(line, correlation_id)
    return True


def release(conn, correlation_id: str, lines: list[bytes]) -> None:
    """Send `lines`, taken out of `conn.held` (the connection's push limits apply to them)."""
    for line in lines:
        conn.push(line, correlation_id)
