"""What one agent is in memory: its record, its inbox of pending messages, its recent turns.

The stored copy (store.py) is written before memory changes become visible to anyone, so an
Agent can always be rebuilt from the database after a restart.
"""
from __future__ import annotations

import asyncio
import hashlib
from collections import deque

from .profiles import Profile

# Where a reply goes: back to the sender (an agent's inbox, or the client that sent it), to the
# topic the message came from, or only to the caller waiting in agent:send.
DIRECT, TOPIC, CALLER = "direct", "topic", "caller"
REQUEST_ID_MAX = SESSION_ID_MAX = 128  # what completion:request accepts


def shortened(text: str, limit: int) -> str:
    """`text` cut to `limit` characters, still telling apart any two texts: the readable start,
    then a hash of the whole."""
    digest = hashlib.sha256(text.encode()).hexdigest()[:32]
    return f"{text[:limit - len(digest) - 1]}~{digest}"


class Message:
    __slots__ = ("message_id", "seq", "sender", "topic", "reply_to", "text", "attempts",
                 "waiter", "ctx", "correlation_id")

    def __init__(self, message_id: str, seq: int, text: str, reply_to: str,
                 sender: str | None = None, topic: str | None = None, attempts: int = 0):
        self.message_id, self.seq, self.text, self.reply_to = message_id, seq, text, reply_to
        self.sender, self.topic, self.attempts = sender, topic, attempts
        self.waiter: asyncio.Future | None = None  # agent:send {wait: true}, this run only
        self.ctx = None  # the request that sent it, to push the reply to its connection
        self.correlation_id: str | None = None

    def request_id(self, agent_id: str) -> str:
        """Deterministic, so a message asked again after a daemon crash is the same request;
        each retry after an agent crash or a restart by request is a new attempt, hence a new
        id. Bounded to what completion accepts, however long the agent id."""
        full = f"{agent_id}:{self.message_id}"
        if self.attempts:
            full = f"{full}:{self.attempts}"
        return full if len(full) <= REQUEST_ID_MAX else shortened(full, REQUEST_ID_MAX)

    def row(self, agent_id: str, received_at: float) -> tuple:
        return (agent_id, self.message_id, self.seq, self.sender, self.topic, self.reply_to,
                self.text, received_at)

    def settle(self, outcome) -> None:
        """Answer a waiting agent:send, if any (a result dict or a KSIError)."""
        if self.waiter is not None and not self.waiter.done():
            if isinstance(outcome, BaseException):
                self.waiter.set_exception(outcome)
            else:
                self.waiter.set_result(outcome)
        self.waiter = None


class Agent:
    __slots__ = ("agent_id", "profile", "session_id", "status", "created_at", "turns",
                 "messages_handled", "restarts", "error", "failures", "inbox", "wakeup", "task",
                 "recent", "current")

    def __init__(self, agent_id: str, profile: Profile, session_id: str, created_at: float,
                 recent_kept: int):
        self.agent_id, self.profile, self.session_id = agent_id, profile, session_id
        self.created_at = created_at
        self.status = "running"
        self.turns = self.messages_handled = self.restarts = 0
        self.failures = 0  # crashes since the last good turn; restarts stop past the limit
        self.error: str | None = None
        self.inbox: deque[Message] = deque()
        self.wakeup = asyncio.Event()
        self.task: asyncio.Task | None = None
        self.recent: deque[dict] = deque(maxlen=recent_kept)
        self.current: Message | None = None  # the message whose completion is running

    def deliver(self, message: Message) -> None:
        self.inbox.append(message)
        self.wakeup.set()

    def record(self) -> dict:
        return {"agent_id": self.agent_id, "profile": self.profile.name, "status": self.status,
                "created_at": self.created_at, "session_id": self.session_id,
                "messages_handled": self.messages_handled}

    def info(self) -> dict:
        return {**self.record(), "model": self.profile.model,
                "max_turns": self.profile.max_turns, "turns": self.turns,
                "restarts": self.restarts, "error": self.error, "pending": len(self.inbox),
                "answering": self.current.message_id if self.current else None,
                "system_prompt": self.profile.system_prompt, "recent": list(self.recent)}

    def fail_waiters(self, error: BaseException, keep_current: bool = False) -> None:
        for message in self.inbox:
            if not (keep_current and message is self.current):
                message.settle(error)
