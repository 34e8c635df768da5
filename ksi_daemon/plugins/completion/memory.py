"""A session's earlier turns: from the conversation store when it runs, else kept in memory.

The store answers `conversation:history` / `conversation:append`. Completion must still work when
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
            return [{"role": m["role"], "content": m["content"]}
                    for m in reply["messages"][-limit:] if m.get("role") and "content" in m]
        return list(self.local.get(session_id, ()))[-limit:]

    async def roles_stored_for(self, session_id: str, request_id: str) -> set[str]:
        """The roles of this request's turns the store already has among the session's newest."""
        reply = await self._ask_store("conversation:history",
                                      {"session_id": session_id, "limit": max(self.window, 50)})
        messages = reply.get("messages") if reply is not None else None
        if not isinstance(messages, list):
            return set()
        return {m.get("role") for m in messages if m.get("request_id") == request_id}

    async def append(self, session_id: str, role: str, content: str, **extra) -> None:
        self.local.setdefault(session_id, deque(maxlen=max(1, self.window))).append(
            {"role": role, "content": content})
        await self._ask_store("conversation:append", {
            "session_id": session_id, "role": role, "content": content,
            **{k: v for k, v in extra.items() if v is not None}})

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
