"""The one reply path: every request ends here, however its handler answered.

    ReplyPath.finish     encode the reply (or its coded error), send it, record the request
    ReplyPath.when_done  `finish` from a task's or a future's done-callback, then release the
                         connection's owed reply; past a deadline the future is cancelled
    OwedReply            what `ctx.reply_later()` hands out: settled once, finished right then

Encoding never costs a request its reply (PROTOCOL.md §1, "exactly one reply"): a result that
cannot be encoded (nested deeper than orjson writes, an integer past 64 bits) is answered
`handler_error`, and an error whose details cannot be encoded is sent without them, both with
the request's event and correlation id.
"""
from __future__ import annotations

import asyncio
import time
from typing import Any

import pydantic
import structlog

from .held_pushes import release
from .history import truncated
from .protocol import (HANDLER_ERROR, TIMEOUT, UNAVAILABLE, VALIDATION_ERROR, KSIError,
                       as_reply_data, encode_error, encode_reply)

log = structlog.get_logger("ksi.reply")
_now = time.time


class ReplyPath:
    """Finishes the requests of one router (its history, subscribers, in-flight and owed sets).

    Only the hot path's names are kept here, fetched once: `finish` runs for every request.
    """

    def __init__(self, router):
        self.history = router.history
        self.history_limit = router.history_limit
        self.subscriptions = router.subscriptions
        self.fan_out = router.fan_out
        self.unknown_stats = router.other_stats["(unknown)"]
        self.in_flight = router.in_flight
        self.owed = router.owed

    def finish(self, handler, stats, event: str, data: dict, cid: str, conn, started: float,
               size: int, result: Any, exc: BaseException | None = None) -> None:
        """Answer a request with `result` (or `exc`) and record it: timings, history, fan-out.
        `size` is the request line's length: past the history's limit its data is truncated
        there (subscribers still see all of it).

        `stats` None is a name nobody answered: counted in the one `(unknown)` bucket and
        kept out of history, so client-chosen names grow neither.
        """
        now = _now()
        if exc is None:
            try:
                line = encode_reply(event, cid, result if result.__class__ is dict
                                    else as_reply_data(result), now)
            except Exception as failure:  # noqa: BLE001 - the client still gets its one reply
                exc = reply_not_encodable(event, cid, failure)
        if exc is not None:
            line = error_line(handler, event, cid, exc)
        conn.send(line)
        held = conn.held
        if held:  # (inline, not a call: every request of a connection with a hold pays it)
            lines = held.pop(cid, None)
            if lines:  # the pushes that waited for this reply (held_pushes.py)
                release(conn, cid, lines)
        if stats is None:
            return self.unknown_stats.record(started, False)
        stats.record(started, exc is None)
        self.history.append((event, cid, now, conn.id, data if size <= self.history_limit
                             else truncated(data, size)))
        if self.subscriptions:
            self.fan_out(event, data, cid, conn)

    def when_done(self, future: asyncio.Future, handler, event: str, data: dict, cid: str,
                  conn, started: float, size: int, deadline: float | None) -> None:
        """Answer with the outcome of an async handler's task or a sync handler's future once it
        is done; past `deadline` it is cancelled and the reply is `timeout`."""
        timer = timed_out = None
        if deadline is not None:
            def expire() -> None:  # cancelled like an async handler's task past its deadline
                nonlocal timed_out
                timed_out = KSIError(TIMEOUT, f"{event} did not finish within {deadline} s")
                future.cancel()
            timer = future.get_loop().call_later(deadline, expire)

        def reply(_future) -> None:
            if timer is not None:
                timer.cancel()
            self.in_flight.pop(future, None)
            try:
                result, exc = future.result(), None
            except BaseException as failure:  # noqa: BLE001 - includes cancellation at shutdown
                result, exc = None, timed_out or failure
            self.finish(handler, handler.stats, event, data, cid, conn, started, size, result,
                        exc)
            conn.reply_done()
        self.in_flight[future] = handler
        conn.reply_owed()  # the reply is owed even after the client's EOF
        future.add_done_callback(reply)


class OwedReply:
    """The reply a sync handler owes after `return ctx.reply_later()`.

    Settled once by `set_result(data)` or `set_exception(exc)`, a future's names, so whatever
    the handler hands it to (the state plugin's SqliteWriter, at the commit) settles it like a
    future; the reply is finished right then, with no future, done-callback or task in between
    (bench/RESULTS.md, "State"). Settling it again, or after the router gave up on it, does
    nothing. A caller that awaits the handler (`ctx.emit`, middleware) asks `as_future()`.
    """
    __slots__ = ("path", "event", "correlation_id", "connection", "handler", "data",
                 "started", "size", "future")

    def __init__(self, path: ReplyPath, event: str, correlation_id: str | None, connection):
        self.path, self.event, self.correlation_id = path, event, correlation_id
        self.connection = connection
        self.handler = self.future = None

    def owe(self, handler, data: dict, started: float, size: int) -> None:
        """Called by the router when the request's handler returned this reply."""
        self.handler, self.data, self.started, self.size = handler, data, started, size
        self.path.owed.add(self)
        self.connection.reply_owed()  # the reply is owed even after the client's EOF

    def as_future(self) -> asyncio.Future:
        self.future = asyncio.get_running_loop().create_future()
        return self.future

    def done(self) -> bool:
        future = self.future
        return self.handler is None and (future is None or future.done())

    def set_exception(self, exc: BaseException) -> None:
        self.set_result(None, exc)

    def set_result(self, result: Any, exc: BaseException | None = None) -> None:
        """Settle with `result`, or with the error `exc` (one body: this is the hot path)."""
        handler = self.handler
        if handler is None:  # awaited as a future (emit, middleware), settled, or never owed
            future = self.future  # (never owed: its handler raised, and that was the reply)
            if future is not None and not future.done():
                if exc is None:
                    future.set_result(result)
                else:
                    future.set_exception(exc)
            return
        self.handler = None  # settled: a second settle finds no handler
        path, conn = self.path, self.connection
        path.owed.discard(self)
        path.finish(handler, handler.stats, self.event, self.data, self.correlation_id, conn,
                    self.started, self.size, result, exc)
        conn.reply_done()


# ---- errors as coded replies -----------------------------------------------------------------

def as_ksi_error(handler, event: str, cid: str | None, exc: BaseException) -> KSIError:
    """Every exception as the coded error the client sees (an unexpected one is logged and
    counted on its plugin's `handler_errors`)."""
    if isinstance(exc, KSIError):
        return exc
    if isinstance(exc, pydantic.ValidationError):
        return KSIError(VALIDATION_ERROR, f"data does not match the schema of {event}",
                        exc.errors(include_url=False, include_context=False))
    if isinstance(exc, asyncio.CancelledError):
        return KSIError(UNAVAILABLE, "the daemon stopped before this request finished")
    plugin = getattr(handler.plugin, "name", None) if handler else None
    if plugin is not None:
        handler.plugin.note_handler_error(event, exc)
    log.error("handler_error", event_name=event, correlation_id=cid, plugin=plugin,
              error=repr(exc), exc_info=exc)
    return KSIError(HANDLER_ERROR, f"{event} failed: {type(exc).__name__}: {exc}")


def error_line(handler, event: str | None, cid: str | None, exc: BaseException) -> bytes:
    """The error reply line for `exc`; without its details if they cannot be encoded."""
    error = as_ksi_error(handler, event, cid, exc)
    try:
        return encode_error(event, cid, error)
    except Exception:  # noqa: BLE001 - details echoing the request (too deep, not JSON-able)
        pass
    try:
        return encode_error(event, cid, KSIError(
            error.code, f"{error.message} (details left out: they could not be encoded)"))
    except Exception:  # noqa: BLE001 - a message orjson refuses (a lone surrogate)
        return encode_error(event, cid, KSIError(error.code, "the reply could not be encoded"))


def reply_not_encodable(event: str, cid: str, failure: Exception) -> KSIError:
    log.warning("reply_not_encodable", event_name=event, correlation_id=cid, error=str(failure))
    return KSIError(HANDLER_ERROR, f"the reply to {event} could not be encoded: {failure}")

