"""What a handler knows about the request it serves, and its way back into the daemon."""
from __future__ import annotations

from typing import Any

from .reply import OwedReply


class Context:
    """A request's context: its event, correlation id and connection (a core `Connection`, or
    None for an event a plugin emitted), the agent it was emitted for (a tool call an agent made;
    None otherwise), its plugin's config and data dir, and the way back to the router (`emit`,
    `push`, `announce`).

    A sync handler that answers later returns `ctx.reply_later()` and settles that once
    (`reply.OwedReply`); everything else about finishing the request is the reply path's.
    """
    __slots__ = ("_router", "event", "correlation_id", "connection", "plugin", "agent_id")

    def __init__(self, router, event: str, correlation_id: str | None, connection,
                 plugin=None, agent_id: str | None = None):
        self._router, self.event, self.correlation_id = router, event, correlation_id
        self.connection, self.plugin, self.agent_id = connection, plugin, agent_id

    async def emit(self, event: str, data: dict | None = None) -> Any:
        """Route `event` as this request's consequence; return its handler's reply data."""
        return await self._router.emit(event, data, correlation_id=self.correlation_id,
                                      source=self.plugin, connection=self.connection,
                                      agent_id=self.agent_id)

    def push(self, event: str, data: Any) -> None:
        """Send `event` to the requesting connection (once) and to matching subscribers."""
        self._router.push(event, data, self.correlation_id, self.connection)

    def announce(self, event: str, data: dict) -> None:
        """`emit` for code that cannot await (a done-callback); the reply data is not returned."""
        self._router.announce(event, data, self.correlation_id, self.plugin, self.connection)

    def reply_later(self) -> OwedReply:
        """For a sync handler that answers later: return this, then settle it once with
        `set_result(data)` or `set_exception(exc)`."""
        return OwedReply(self._router.replies, self.event, self.correlation_id, self.connection)

    @property
    def config(self) -> dict:
        return self.plugin.config if self.plugin is not None else {}

    @property
    def data_dir(self):
        return self.plugin.data_dir if self.plugin is not None else None
