"""What a handler knows about the request it serves, and how it answers: at once, or later."""
from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from .protocol import as_reply_data, encode_reply

if TYPE_CHECKING:
    from .router import Handler, Router


class Context:
    """A request's context: its event, correlation id and connection, and the way back to the
    router (`emit`, `push`, `announce`).

    It is also the reply a sync handler owes when it answers later: the handler returns
    `ctx.reply_later()` (this very object) and it is settled once by `set_result(data)` or
    `set_exception(exc)`, a future's names, so a SqliteWriter resolves it like one. The reply is
    written right then: no future, done-callback or task in between, and no second object per
    request (the state plugin's writes: bench/RESULTS.md, "State").
    """
    __slots__ = ("router", "event", "correlation_id", "connection", "plugin",
                 "handler", "data", "started", "future")

    def __init__(self, router: Router, event: str, correlation_id: str | None, connection,
                 plugin=None):
        self.router, self.event, self.correlation_id = router, event, correlation_id
        self.connection, self.plugin = connection, plugin

    async def emit(self, event: str, data: dict | None = None) -> Any:
        """Route `event` as this request's consequence; return its handler's reply data."""
        return await self.router.emit(event, data, correlation_id=self.correlation_id,
                                      source=self.plugin, connection=self.connection)

    def push(self, event: str, data: Any) -> None:
        """Send `event` to the requesting connection (once) and to matching subscribers."""
        self.router.push(event, data, self.correlation_id, self.connection)

    def announce(self, event: str, data: dict) -> None:
        """`emit` for code that cannot await (a done-callback); the reply data is not returned."""
        self.router.announce(event, data, self.correlation_id, self.plugin, self.connection)

    def reply_later(self) -> Context:
        """For a sync handler that answers later: return this, then settle it once."""
        # (the owed reply's slots are set here, not in __init__: most requests never owe one)
        self.handler = self.future = None
        return self

    @property
    def config(self) -> dict:
        return self.plugin.config if self.plugin is not None else {}

    @property
    def data_dir(self):
        return self.plugin.data_dir if self.plugin is not None else None

    # ---- the owed reply ----------------------------------------------------------------------

    def owe(self, handler: Handler, data: dict, started: float) -> None:
        """Called by the router when a request's handler returned `reply_later()`."""
        self.handler, self.data, self.started = handler, data, started
        self.router.owed.add(self)
        self.connection.reply_owed()  # the reply is owed even after the client's EOF

    def as_future(self) -> asyncio.Future:
        """For the callers that await the handler (emit, the middleware path)."""
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
        router, conn = self.router, self.connection
        router.owed.discard(self)
        if exc is None:
            conn.send(encode_reply(self.event, self.correlation_id,
                                   result if result.__class__ is dict else as_reply_data(result)))
        else:
            conn.send(router.error_reply(handler, self.event, self.correlation_id, exc))
        router.after_reply(handler.stats, self.event, self.data, self.correlation_id, conn,
                           self.started, exc is None)
        conn.reply_done()
