"""A reply a sync handler owes: answered later, without a future or a task in between."""
from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from .protocol import as_reply_data, encode_reply

if TYPE_CHECKING:
    from .router import Handler, Router


class OwedReply:
    """The reply a sync handler owes: returned instead of its reply data and settled once by
    `set_result(data)` or `set_exception(exc)`, a future's names, so a SqliteWriter resolves it
    like one. The reply is written right then: no future, done-callback or task in between (the
    state plugin's writes: bench/RESULTS.md, "State")."""
    __slots__ = ("router", "event", "cid", "conn", "handler", "data", "started", "future")

    def __init__(self, router: Router, event: str, cid: str, conn):
        self.router, self.event, self.cid, self.conn = router, event, cid, conn
        self.handler = self.future = None

    def owe(self, handler: Handler, data: dict, started: float) -> None:
        """Called by the router when a request's handler returned this."""
        self.handler, self.data, self.started = handler, data, started
        self.router.owed.add(self)
        self.conn.pending += 1  # the reply is owed even after the client's EOF

    def as_future(self) -> asyncio.Future:
        """For the callers that await the handler (emit, the middleware path)."""
        self.future = asyncio.get_running_loop().create_future()
        return self.future

    def done(self) -> bool:
        return self.router is None

    def set_exception(self, exc: BaseException) -> None:
        self.set_result(None, exc)

    def set_result(self, result: Any, exc: BaseException | None = None) -> None:
        """Settle with `result`, or with the error `exc` (one body: this is the hot path)."""
        router, self.router = self.router, None
        future = self.future
        if future is not None:  # awaited as a future (emit, the middleware path)
            if not future.done():
                if exc is None:
                    future.set_result(result)
                else:
                    future.set_exception(exc)
            return
        if router is None or self.handler is None:  # settled before, or its handler raised
            return
        router.owed.discard(self)
        if exc is None:
            data = result if result.__class__ is dict else as_reply_data(result)
            self.conn.send(encode_reply(self.event, self.cid, data))
        else:
            self.conn.send(router.error_reply(self.handler, self.event, self.cid, exc))
        router.after_reply(self.handler.stats, self.event, self.data, self.cid, self.conn,
                           self.started, exc is None)
        self.conn.request_done()
