"""The conversation helpers of AsyncClient: browse, read, search and export stored sessions.

    for session in await client.conversations(limit=10):
        print(session["session_id"], session["message_count"])
    chat = await client.conversation("demo")                  # its messages, oldest first
    hits = await client.search_conversations("quantum")
    path = (await client.export_conversation("demo", "markdown"))["path"]

Every turn of every completion with a `session_id` is stored by the conversation plugin; an
unknown session is KSINotFoundError.
"""
from __future__ import annotations

from ._data import without_none


class ConversationHelpers:
    """Mixed into AsyncClient (an EventClient): uses its emit()."""

    async def conversations(self, *, limit: int | None = None, offset: int | None = None,
                            sort: str | None = None) -> list[dict]:
        """Stored conversations, most recently updated first (`sort`: updated_desc,
        updated_asc, created_desc, created_asc, messages_desc), each {session_id,
        created_at, updated_at, message_count, last_model}."""
        reply = await self.emit("conversation:list", without_none(
            limit=limit, offset=offset, sort=sort))
        return reply["sessions"]

    async def conversation(self, session_id: str, *, limit: int | None = None,
                           offset: int | None = None) -> dict:
        """One conversation: its record and `messages` [{role, content, model, timestamp,
        ...}], oldest first, `limit` at a time from `offset`; `total` counts them all."""
        return await self.emit("conversation:get", without_none(
            session_id=session_id, limit=limit, offset=offset))

    async def search_conversations(self, query: str, *, session_id: str | None = None,
                                   limit: int | None = None) -> list[dict]:
        """Stored turns containing every word of `query`, best matches first."""
        reply = await self.emit("conversation:search", without_none(
            query=query, session_id=session_id, limit=limit))
        return reply["results"]

    async def export_conversation(self, session_id: str, format: str = "markdown") -> dict:
        """Write a conversation to the daemon's var/exports/ as "markdown" or "json";
        returns {session_id, format, path, size, message_count}."""
        return await self.emit("conversation:export", {"session_id": session_id,
                                                       "format": format})
