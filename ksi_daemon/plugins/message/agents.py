"""Agents' inboxes: subscriptions owned by an agent id rather than a connection.

A delivery to an agent is the event `agent:inbox` {agent_id, message_id, topic, sender, content,
timestamp}, emitted through the router, so the agent plugin handles it (and `system:subscribe`
subscribers see it) without either plugin importing the other. Each inbox is a bounded queue
drained by its own task, so one agent whose handler is slow holds up neither the publisher nor
the other agents; past `agent_queue_size` undelivered messages, new ones are dropped for that
agent (the slow-consumer rule of PROTOCOL.md §3, applied to agents).

Every inbox has a cursor, the highest sequence number its handler was handed. Subscriptions and
cursors are stored, so after a restart an inbox exists again but is dormant: nothing is delivered
to it until the agent subscribes again, and `replay` then hands it the retained messages past its
cursor: what was addressed to it while it was not running.
"""
from __future__ import annotations

import asyncio
from collections import deque
from typing import Awaitable, Callable

import structlog

from ...protocol import KSIError
from .topics import compile_topic_pattern

log = structlog.get_logger("ksi.plugin.message")
INBOX_EVENT = "agent:inbox"


class AgentInbox:
    __slots__ = ("agent_id", "patterns", "active", "last_seq", "handed_seq", "queue", "task",
                 "dropped")

    def __init__(self, agent_id: str, last_seq: int):
        self.agent_id = agent_id
        self.patterns: dict[str, Callable[[str], bool]] = {}
        self.active = False
        self.last_seq = last_seq    # handed to the agent's handler (stored)
        self.handed_seq = last_seq  # put in the queue (memory only)
        self.queue: deque = deque()
        self.task: asyncio.Task | None = None
        self.dropped = 0

    def add_patterns(self, patterns: list[str]) -> None:
        for pattern in patterns:
            if pattern not in self.patterns:
                self.patterns[pattern] = compile_topic_pattern(pattern)

    def matches(self, topic: str) -> bool:
        return any(match(topic) for match in self.patterns.values())


class AgentInboxes:
    def __init__(self, queue_size: int, emit: Callable[[str, dict], Awaitable],
                 on_handed: Callable[[str, int], None]):
        self.queue_size, self._emit, self._on_handed = queue_size, emit, on_handed
        self.inboxes: dict[str, AgentInbox] = {}

    def restore(self, patterns: dict[str, list[str]], cursors: dict[str, int]) -> None:
        for agent_id, stored in patterns.items():
            inbox = self.inboxes[agent_id] = AgentInbox(agent_id, cursors.get(agent_id, 0))
            inbox.add_patterns(stored)

    def subscribe(self, agent_id: str, patterns: list[str], current_seq: int) -> AgentInbox:
        """Add patterns to an agent's inbox (created with a cursor at `current_seq`)."""
        inbox = self.inboxes.get(agent_id)
        if inbox is None:
            inbox = self.inboxes[agent_id] = AgentInbox(agent_id, current_seq)
        inbox.add_patterns(patterns)
        return inbox

    def activate(self, inbox: AgentInbox, missed: list[tuple[int, dict]] | None,
                 current_seq: int) -> int:
        """Start live delivery; hand over `missed` first (replay), or skip past it (None)."""
        replayed = 0
        if missed is None:
            if not inbox.active and inbox.handed_seq < current_seq:
                inbox.handed_seq = current_seq
                if not inbox.queue and inbox.last_seq < current_seq:
                    inbox.last_seq = current_seq
                    self._on_handed(inbox.agent_id, current_seq)
        else:
            for seq, message in missed:
                if seq > inbox.handed_seq and message["sender"] != inbox.agent_id:
                    replayed += self._enqueue(inbox, seq, message)
        inbox.active = True
        return replayed

    def unsubscribe(self, agent_id: str, patterns: list[str] | None) -> list[str]:
        inbox = self.inboxes.get(agent_id)
        if inbox is None:
            return []
        left = list(inbox.patterns) if patterns is None else \
            [p for p in patterns if p in inbox.patterns]
        for pattern in left:
            del inbox.patterns[pattern]
        if not inbox.patterns:
            del self.inboxes[agent_id]
            if inbox.task is not None:
                inbox.task.cancel()
        return left

    def deliver(self, seq: int, message: dict) -> int:
        """Queue `message` for every active agent subscribed to its topic, except its sender."""
        delivered = 0
        topic, sender = message["topic"], message["sender"]
        for inbox in self.inboxes.values():
            if inbox.active and inbox.agent_id != sender and inbox.matches(topic):
                delivered += self._enqueue(inbox, seq, message)
        return delivered

    def _enqueue(self, inbox: AgentInbox, seq: int, message: dict) -> int:
        if len(inbox.queue) >= self.queue_size:
            inbox.dropped += 1
            if inbox.dropped == 1 or inbox.dropped % 1000 == 0:
                log.warning("agent_inbox_full", agent_id=inbox.agent_id, dropped=inbox.dropped,
                            queue_size=self.queue_size)
            return 0
        inbox.queue.append((seq, message))
        inbox.handed_seq = max(inbox.handed_seq, seq)
        if inbox.task is None:
            inbox.task = asyncio.get_running_loop().create_task(
                self._drain(inbox), name=f"message-inbox-{inbox.agent_id}")
        return 1

    async def _drain(self, inbox: AgentInbox) -> None:
        try:
            while inbox.queue:
                seq, message = inbox.queue.popleft()
                try:
                    await self._emit(INBOX_EVENT, {"agent_id": inbox.agent_id, **message})
                except KSIError as exc:
                    # The agent's handler refused or failed: the message counts as handed over
                    # (retrying it forever would wedge the inbox); the failure is logged.
                    log.warning("agent_inbox_handler_failed", agent_id=inbox.agent_id,
                                message_id=message["message_id"], error=exc.message)
                if seq > inbox.last_seq:
                    inbox.last_seq = seq
                    self._on_handed(inbox.agent_id, seq)
        finally:
            inbox.task = None

    async def stop(self) -> None:
        tasks = [inbox.task for inbox in self.inboxes.values() if inbox.task is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=2.0)
