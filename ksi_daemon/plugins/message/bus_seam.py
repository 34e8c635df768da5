"""The seam between the message events and what carries messages beyond this node.

The message plugin answers `message:*`, owns their schemas and this node's connection
subscriptions. Without a bus it also keeps retention and agents' inboxes itself (SQLite, the
single daemon). With a `MessageBus` (the cluster plugin's JetStream streams, supplied through
the `ksi_message_bus` hook, hookspecs.py) the bus stores each message, keeps the retention and
every agent's inbox position, and hands this node what it must deliver through `LocalDelivery`.

A message is the dict pushed as `message:received`: message_id, topic, sender, content,
timestamp.
"""
from __future__ import annotations

from typing import Awaitable, Protocol

class LocalDelivery(Protocol):
    """What the message plugin does with a message the bus brings to this node."""

    def to_connections(self, message: dict) -> int:
        """Push it to this node's subscribed connections; how many took it."""

    def to_agent(self, agent_id: str, message: dict) -> Awaitable[bool]:
        """Hand it to an agent of this node (the `agent:inbox` event); done when handed. False
        when the agent is not on this node (it moved to another, or is gone): the message is
        not this node's to take."""

class MessageBus(Protocol):
    async def open(self, local: LocalDelivery, settings) -> None:
        """Ready the bus (settings: the plugin's MessageSettings, for the retention)."""

    def services(self) -> list[Awaitable]:
        """Long-running work the daemon supervises and cancels at shutdown."""

    async def close(self) -> None:
        """Stop delivering; release everything."""

    async def publish(self, message: dict) -> None:
        """Store `message` for every node (what the reply promises), then return: the message
        plugin pushes it to this node's connections itself, every other node's bus brings it
        to theirs (`to_connections`). KSIError `unavailable` when it cannot be stored."""

    async def history(self, topic: str, limit: int) -> list[dict]:
        """The retained messages of `topic`, oldest first."""

    async def subscribe_agent(self, agent_id: str, topics: list[str], replay: bool,
                              max_patterns: int) -> dict:
        """Subscribe an agent of this node: {topics, agent_id, replayed}."""

    async def unsubscribe_agent(self, agent_id: str, topics: list[str] | None) -> list[str]:
        """Leave `topics` (None: all); the patterns actually left."""
