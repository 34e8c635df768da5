"""What the message plugin does with the messages a `MessageBus` brings to this node.

The `LocalDelivery` of bus_seam.py: a message another node published is pushed to this node's
subscribed connections (encoded once, as a local publish is), and an agent's message becomes the
`agent:inbox` event, as AgentInboxes (agents.py) hands it in the single daemon.
"""
from __future__ import annotations

from typing import Awaitable, Callable

import structlog

from ...core.protocol import encode_push
from ...protocol import KSIError
from .agents import INBOX_EVENT
from .connections import ConnectionSubscriptions

PUSH_EVENT = "message:received"
log = structlog.get_logger("ksi.plugin.message")


class BusDelivery:
    def __init__(self, connections: ConnectionSubscriptions,
                 emit: Callable[[str, dict], Awaitable]):
        self.connections, self._emit = connections, emit

    def to_connections(self, message: dict, correlation_id: str | None = None) -> int:
        if not len(self.connections):
            return 0
        line = encode_push(PUSH_EVENT, message, correlation_id)
        return self.connections.deliver(message["topic"], line, correlation_id)

    async def to_agent(self, agent_id: str, message: dict) -> bool:
        try:
            reply = await self._emit(INBOX_EVENT, {"agent_id": agent_id, **message})
        except KSIError as exc:
            # As in the single daemon: a refusing or failing handler does not wedge the inbox.
            log.warning("agent_inbox_handler_failed", agent_id=agent_id,
                        message_id=message["message_id"], error=exc.message)
            return True
        return not (isinstance(reply, dict) and reply.get("here") is False)
