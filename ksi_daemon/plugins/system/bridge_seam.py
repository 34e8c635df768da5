"""The seam between `system:subscribe` and the events of other nodes.

The system plugin owns subscriptions and the router's fan-out; an `EventBridge` (the cluster
plugin's, over NATS) carries events between nodes. Each side sees the other through one small
Protocol: the bridge gets `LocalEvents`, and this node's events reach the bridge as the lines
the router pushes to a subscriber (`export`), which makes them cost nothing unless another
node subscribed to them.
"""
from __future__ import annotations

from typing import Awaitable, Protocol


class LocalEvents(Protocol):
    """This node, as the bridge sees it (remote_events.py)."""

    def local_patterns(self) -> set[str]:
        """The patterns this node's connections subscribed to now."""

    def want_remote(self, patterns: set[str]) -> None:
        """The patterns other nodes subscribed to: this node's matching events go to `export`."""

    def deliver(self, event: str, data, correlation_id: str | None) -> None:
        """An event raised on another node: push it to this node's matching subscribers."""


class EventBridge(Protocol):
    def open(self, local: LocalEvents) -> None:
        """Start carrying events (called once, when the daemon is ready)."""

    def export(self, line: bytes) -> None:
        """An event of this node, encoded as a push, that another node wants."""

    def local_interest_changed(self) -> Awaitable[None]:
        """This node's subscriptions changed: done when other nodes can learn it (or at once
        when they cannot be reached; the bridge catches up when they can)."""
