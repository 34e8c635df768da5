"""The seam between the state events and where the state lives.

The state plugin answers `state:*` and owns their schemas; a `StateStore` keeps the data. Two
implement it: `SqliteStateStore` (sqlite_state.py, the single daemon's store, the default) and
the cluster plugin's JetStream KV store (ksi_daemon/plugins/cluster/kv_state.py). Which one a
daemon uses is decided once, at start: the first plugin answering the `ksi_state_store` hook
(state/hookspecs.py) supplies the store, else it is SQLite.

Each event method takes the request as the handler got it and returns what a handler returns:
the reply (a dict), a future of it, or an owed reply (`ctx.reply_later()`). They are called on
the event loop in arrival order, so a store keeps one connection's requests in order by what
it queues in the call itself (docs/STATE.md, "One connection is one ordered stream").
"""
from __future__ import annotations

from typing import Any, Awaitable, Callable, Protocol

# announce_all("state:changed", [(correlation_id, data), ...]): the plugin context's, so that
# the events are recorded as coming from the state plugin.
AnnounceAll = Callable[[str, list], None]


class StateStore(Protocol):
    async def open(self, announce_all: AnnounceAll, report_degraded: Callable) -> None:
        """Ready the store before the daemon accepts requests."""

    def services(self) -> list[Awaitable]:
        """Long-running work the daemon supervises and cancels at shutdown (expiry sweeps)."""

    async def close(self) -> None:
        """Finish what was accepted, then release everything."""

    def set(self, data: dict, ctx) -> Any: ...
    def get(self, data: dict) -> Any: ...
    def delete(self, data: dict, ctx) -> Any: ...
    def list(self, data) -> Any: ...
    def clear(self, data, ctx) -> Any: ...
    def audit(self, data) -> Any: ...

    def record_refusal(self, event_name: str, message: str, connection) -> None:
        """A permission refusal, for the audit (a store without an audit ignores it)."""

    def queue_depths(self) -> dict[str, int]:
        """What waits right now, by queue (system:metrics)."""
