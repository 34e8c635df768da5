"""The seam between the conversation events and where the turns live.

The conversation plugin answers `conversation:*` and owns their schemas; a `ConversationStore`
keeps the turns. Two implement it: `SqliteConversationStore` (sqlite_conversations.py, the single
daemon's store, the default) and the cluster plugin's JetStream store
(ksi_daemon/plugins/cluster/conversation_log.py). Which one a daemon uses is decided once, at
start: the first plugin answering the `ksi_conversation_store` hook (conversation/hookspecs.py)
supplies it, else it is SQLite.

Each event method takes the validated request and returns what a sync handler may return: the
reply (a dict) or an asyncio Future of it (a Task will do), raising or failing with a KSIError.
A shared store may build on a `LocalCopy`: the node's own SQLite copy of the conversations,
which the conversation plugin opens for it (the hook's `open_local_copy`), so that reads,
sorting, full-text search and export behave on every node exactly as on a single daemon.
"""
from __future__ import annotations

from typing import Any, Protocol


class ConversationStore(Protocol):
    async def open(self) -> None:
        """Ready the store before the daemon accepts requests."""

    async def close(self) -> None:
        """Finish what was accepted, then release everything."""

    def append(self, data) -> Any:
        """`conversation:append` (an AppendRequest): one message, answered once stored."""

    def append_turn(self, data) -> Any:
        """`conversation:append_turn`: a turn's messages, all or none, answered once stored."""

    def history(self, data) -> Any: ...
    def list(self, data) -> Any: ...
    def get(self, data) -> Any: ...
    def search(self, data) -> Any: ...
    def export(self, data) -> Any: ...


class LocalCopy(ConversationStore, Protocol):
    """A node's SQLite copy of conversations kept elsewhere (the reads of ConversationStore
    answer from it; its own `append`/`append_turn` are not used)."""

    def apply_turn(self, first_id: int, session_id: str, messages: list[dict],
                   at: float) -> Any:
        """Store a turn the shared store holds, under the ids `first_id`, `first_id + 1`, ...
        and the time `at` it was written (the same on every node). Idempotent: a turn applied
        twice is stored once. Returns a Future of `{session_id, message_ids, timestamp}`,
        resolved once the copy committed it."""
