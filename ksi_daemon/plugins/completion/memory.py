"""A session's earlier turns: from the conversation store when it runs, else kept in memory.

The store answers `conversation:history` / `conversation:append_turn`. Completion must still work when
the store plugin is absent or failed, so turns are also kept in a bounded in-memory window.
"""
from __future__ import annotations

from collections import deque

from ...protocol import UNAVAILABLE, UNKNOWN_EVENT, KSIError


class ConversationMemory:
    def __init__(self, emit, log, window: int = 40):
        self.emit, self.log, self.window = emit, log, window
        self.local: dict[str, deque] = {}
        self._warned = False

    async def history(self, session_id: str, limit: int | None = None) -> list[dict]:
        limit = self.window if limit is None else limit
        if limit <= 0:
            return []
        reply = await self._ask_store("conversation:history",
                                      {"session_id": session_id, "limit": limit})
        if reply is not None and isinstance(reply.get("messages"), list):
            return valid_for_a_model([_in_model_shape(m) for m in reply["messages"][-limit:]
                                      if m.get("role") and "content" in m])
        return valid_for_a_model(list(self.local.get(session_id, ()))[-limit:])

    async def count_stored_for(self, session_id: str, request_id: str) -> int:
        """How many of this request's turns the store already has among the session's newest."""
        reply = await self._ask_store("conversation:history",
                                      {"session_id": session_id, "limit": max(self.window, 50)})
        messages = reply.get("messages") if reply is not None else None
        if not isinstance(messages, list):
            return 0
        return sum(1 for m in messages if m.get("request_id") == request_id)

    async def append_turn(self, session_id: str, messages: list[dict]) -> None:
        """Store a turn's messages (OpenAI's shape plus model, usage, request_id) at once."""
        window = self.local.setdefault(session_id, deque(maxlen=max(1, self.window)))
        window.extend(_in_model_shape(message) for message in messages)
        await self._ask_store("conversation:append_turn", {
            "session_id": session_id,
            "messages": [{k: v for k, v in message.items() if v is not None or k == "content"}
                         for message in messages]})

    async def _ask_store(self, event: str, data: dict):
        try:
            reply = await self.emit(event, data)
        except KSIError as exc:
            if exc.code not in (UNKNOWN_EVENT, UNAVAILABLE):
                raise
            reply = None
        if reply is None or not isinstance(reply, dict):
            if not self._warned:
                self._warned = True
                self.log.warning("conversation_store_missing",
                                 detail=f"{event} is not answered; keeping turns in memory")
            return None
        return reply


def _in_model_shape(message: dict) -> dict:
    shape = {"role": message["role"], "content": message.get("content")}
    for key in ("tool_calls", "tool_call_id"):
        if message.get(key) is not None:
            shape[key] = message[key]
    return shape


def valid_for_a_model(messages: list[dict]) -> list[dict]:
    """History a model accepts: every assistant tool call answered by a tool message.

    A window may start between a call and its results, and a stop may have left a call without
    its result in the store (the turn's messages are stored one by one): tool messages without
    their call are left out, and a call without its result is answered as interrupted.
    """
    valid: list[dict] = []
    waiting: list[str] = []  # the last asking message's calls not answered yet
    for message in messages:
        if message.get("role") == "tool":
            if message.get("tool_call_id") in waiting:
                waiting.remove(message["tool_call_id"])
                valid.append(message)
            continue
        valid.extend(_interrupted(waiting))
        waiting = [call.get("id") for call in message.get("tool_calls") or ()]
        valid.append(message)
    valid.extend(_interrupted(waiting))
    return valid


def _interrupted(call_ids: list[str]) -> list[dict]:
    return [{"role": "tool", "tool_call_id": call_id,
             "content": '{"error": {"code": "unavailable", "message": "interrupted"}}'}
            for call_id in call_ids]
