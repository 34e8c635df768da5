"""The `conversation` events: the store of turns the completion service writes and reads.

The plugin owns the events and their schemas; where the turns live is a `ConversationStore`
(store_seam.py), chosen once at start: SQLite (sqlite_conversations.py) unless another plugin
supplies a store through the `ksi_conversation_store` hook (hookspecs.py), as the cluster plugin
does in cluster mode with a JetStream stream (docs/CLUSTER.md, "Conversations").

`conversation:append` (one message) and `conversation:append_turn` (a turn's messages, all or
none) reply once stored, like a state write.
"""
from __future__ import annotations

from pathlib import Path

from ...event_system import event_handler
from ...plugin_base import BasePlugin, hookimpl
from ...plugin_types import PluginCapabilities, PluginMetadata
from . import hookspecs
from .models import (AppendReply, AppendRequest, AppendTurnReply, AppendTurnRequest,
                     ConversationSettings, ExportReply, ExportRequest, GetRequest,
                     HistoryRequest, ListRequest, SearchRequest)
from .sqlite_conversations import SqliteConversationStore
from .store_seam import ConversationStore

DB_FILE_NAME = "conversations.db"
CLUSTER_COPY_FILE_NAME = "conversations.cluster.db"
# The node's copy under a shared store is refilled from it at every start: no fsync per turn.
CLUSTER_COPY_SYNCHRONOUS = "NORMAL"


class ConversationPlugin(BasePlugin):
    def __init__(self):
        super().__init__(
            PluginMetadata(name="conversation", version="0.1.0", priority=10,
                           description="Conversation turns on SQLite with full-text search",
                           hookspecs=[hookspecs]),
            PluginCapabilities(event_namespaces=["conversation"],
                               provides_services=["conversation"]))
        self.store: ConversationStore | None = None

    # ---- lifecycle ---------------------------------------------------------------------------

    @hookimpl
    async def ksi_startup(self, config, context):
        settings = ConversationSettings.model_validate(context.config or {})
        var_dir = Path(config["daemon"]["var_dir"])
        path = Path(settings.db_path).expanduser() if settings.db_path else \
            var_dir / "db" / DB_FILE_NAME
        exports_dir = Path(settings.exports_dir).expanduser() if settings.exports_dir \
            else var_dir / "exports"
        deadline_s = config["daemon"]["event_timeout"]

        def open_local_copy() -> SqliteConversationStore:
            return SqliteConversationStore(
                path.with_name(CLUSTER_COPY_FILE_NAME), exports_dir, CLUSTER_COPY_SYNCHRONOUS,
                deadline_s, context.report_degraded, fresh=True)

        store = await context.hook("ksi_conversation_store").call_first(
            config=config, open_local_copy=open_local_copy)
        if store is None and config["cluster"]["nats_url"]:
            # A node keeping its turns in its own file would lose them to the other nodes.
            raise RuntimeError("cluster mode is configured but no plugin supplied the cluster's "
                               "conversation store (is the cluster plugin disabled?)")
        store = store or SqliteConversationStore(path, exports_dir, settings.synchronous,
                                                 deadline_s, context.report_degraded)
        await store.open()
        self.store = store

    @hookimpl
    async def ksi_shutdown(self, context):
        if self.store is not None:
            await self.store.close()

    # ---- the write side (the completion service calls these) ---------------------------------

    # timeout=None: the store bounds its writes (SQLite's deadline sweep answers `timeout`,
    # the cluster's store bounds every request to NATS) instead of a timer per request.
    @event_handler("conversation:append", returns=AppendReply, timeout=None)
    def append(self, data: AppendRequest):
        """Record one message of a conversation; the reply comes after the commit."""
        return self.store.append(data)

    @event_handler("conversation:append_turn", returns=AppendTurnReply, timeout=None)
    def append_turn(self, data: AppendTurnRequest):
        """Record a turn's messages in order, in one transaction; the reply comes after the
        commit."""
        return self.store.append_turn(data)

    @event_handler("conversation:history")
    def history(self, data: HistoryRequest):
        """The newest `limit` turns of a session, oldest first (empty for a new session)."""
        return self.store.history(data)

    # ---- browsing ----------------------------------------------------------------------------

    @event_handler("conversation:list")
    def list(self, data: ListRequest):
        """Conversations with their message counts, a page at a time, in the chosen order."""
        return self.store.list(data)

    @event_handler("conversation:get")
    def get(self, data: GetRequest):
        """One conversation's messages, oldest first, a page at a time."""
        return self.store.get(data)

    @event_handler("conversation:search")
    def search(self, data: SearchRequest):
        """Full-text search (SQLite FTS5) over every stored turn, best matches first."""
        return self.store.search(data)

    @event_handler("conversation:export", returns=ExportReply)
    def export(self, data: ExportRequest):
        """Write a conversation to var/exports/ as markdown or JSON; returns the file's path."""
        return self.store.export(data)


ksi_plugin = ConversationPlugin
