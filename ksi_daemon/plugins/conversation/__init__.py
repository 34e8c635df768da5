"""The `conversation` events: the store of turns the completion service writes and reads.

`conversation:append` (one message) and `conversation:append_turn` (a turn's messages, in one
transaction) reply after their commit, like a state write; list, get, history and
search are indexed point or page reads run inline on the event loop; export reads the whole
session and writes a file, so it runs in a worker thread with its own connection.
"""
from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import structlog

from ...event_system import event_handler
from ...plugin_base import BasePlugin, hookimpl
from ...plugin_types import PluginCapabilities, PluginMetadata
from ...protocol import NOT_FOUND, UNAVAILABLE, VALIDATION_ERROR, KSIError
# Storage machinery shared with the state plugin (a library, not the state plugin's events).
from ...storage.sqlite_database import open_reader
from ...storage.plugin_database import PluginDatabase
from ...storage.sqlite_writer import SqliteWriter, WriterStopped
from .export import write_export
from .models import (AppendReply, AppendRequest, AppendTurnReply, AppendTurnRequest,
                     ConversationSettings, ExportReply, ExportRequest, GetRequest,
                     HistoryRequest, ListRequest, SearchRequest)
from .store import ConversationReader, append_message, append_turn, create_schema, fts_query_of

DB_FILE_NAME = "conversations.db"
log = structlog.get_logger("ksi.plugin.conversation")


class ConversationPlugin(BasePlugin):
    def __init__(self):
        super().__init__(
            PluginMetadata(name="conversation", version="0.1.0", priority=10,
                           description="Conversation turns on SQLite with full-text search"),
            PluginCapabilities(event_namespaces=["conversation"],
                               provides_services=["conversation"]))
        self.database: PluginDatabase | None = None
        self.writer: SqliteWriter | None = None
        self.reader: ConversationReader | None = None

    # ---- lifecycle ---------------------------------------------------------------------------

    @hookimpl
    def ksi_startup(self, config, context):
        settings = ConversationSettings.model_validate(context.config or {})
        var_dir = Path(config["daemon"]["var_dir"])
        self.path = Path(settings.db_path).expanduser() if settings.db_path else \
            var_dir / "db" / DB_FILE_NAME
        self.exports_dir = Path(settings.exports_dir).expanduser() if settings.exports_dir \
            else var_dir / "exports"
        self.database = PluginDatabase.open(
            self.path, name="conversation", synchronous=settings.synchronous,
            create_schema=create_schema, deadline_s=config["daemon"]["event_timeout"],
            report_degraded=context.report_degraded)
        self.writer = self.database.writer
        self.reader = ConversationReader(self.database.reader)

    @hookimpl
    async def ksi_shutdown(self, context):
        if self.writer is not None:
            await self.database.close()

    # ---- the write side (the completion service calls these) ---------------------------------

    # timeout=None: the writer's deadline sweep answers `timeout` instead of a timer per request.
    # Plain handlers answered by the writer's future: no task per write.
    @event_handler("conversation:append", returns=AppendReply, timeout=None)
    def append(self, data: AppendRequest):
        """Record one message of a conversation; the reply comes after the commit."""
        return self._written(append_message, data.session_id, data.role, data.content,
                             data.model, data.usage, data.request_id, data.metadata,
                             data.tool_calls, data.tool_call_id)

    @event_handler("conversation:append_turn", returns=AppendTurnReply, timeout=None)
    def append_turn(self, data: AppendTurnRequest):
        """Record a turn's messages in order, in one transaction; the reply comes after the
        commit."""
        return self._written(append_turn, data.session_id,
                             [message.model_dump(exclude_none=True) for message in data.messages])

    def _written(self, op, *args):
        try:
            return self.writer.submit(op, *args)
        except WriterStopped:
            raise KSIError(UNAVAILABLE, "the conversation store is shutting down") from None

    @event_handler("conversation:history")
    def history(self, data: HistoryRequest):
        """The newest `limit` turns of a session, oldest first (empty for a new session)."""
        messages = self.reader.latest_messages(data.session_id, data.limit)
        return {"session_id": data.session_id, "messages": messages, "count": len(messages)}

    # ---- browsing ----------------------------------------------------------------------------

    @event_handler("conversation:list")
    def list(self, data: ListRequest):
        """Conversations with their message counts, a page at a time, in the chosen order."""
        sessions, total = self.reader.sessions(data.sort, data.limit, data.offset)
        return {"sessions": sessions, "count": len(sessions), "total": total,
                "offset": data.offset, "sort": data.sort}

    @event_handler("conversation:get")
    def get(self, data: GetRequest):
        """One conversation's messages, oldest first, a page at a time."""
        session = self._session(data.session_id)
        messages = self.reader.messages(data.session_id, data.limit, data.offset)
        return {**session, "messages": messages, "count": len(messages),
                "total": session["message_count"], "offset": data.offset}

    @event_handler("conversation:search")
    def search(self, data: SearchRequest):
        """Full-text search (SQLite FTS5) over every stored turn, best matches first."""
        match = fts_query_of(data.query) if data.syntax == "words" else data.query
        if not match:
            raise KSIError(VALIDATION_ERROR, "query has no words to search for",
                           [{"loc": ["query"], "msg": "no words", "type": "value_error"}])
        try:
            results = self.reader.search(match, data.session_id, data.limit)
        except sqlite3.OperationalError as exc:
            raise KSIError(VALIDATION_ERROR, f"query is not valid FTS5 syntax: {exc}",
                           [{"loc": ["query"], "msg": str(exc), "type": "value_error"}]) from None
        return {"query": data.query, "results": results, "count": len(results)}

    @event_handler("conversation:export", returns=ExportReply)
    async def export(self, data: ExportRequest):
        """Write a conversation to var/exports/ as markdown or JSON; returns the file's path."""
        self._session(data.session_id)
        path, count = await asyncio.to_thread(self._export, data.session_id, data.format)
        return {"session_id": data.session_id, "format": data.format, "path": str(path),
                "size": path.stat().st_size, "message_count": count}

    # ---- helpers -----------------------------------------------------------------------------

    def _session(self, session_id: str) -> dict:
        session = self.reader.session(session_id)
        if session is None:
            raise KSIError(NOT_FOUND, f"no conversation with session_id {session_id!r}")
        return session

    def _export(self, session_id: str, fmt: str) -> tuple[Path, int]:
        # Its own connection: one snapshot for the session row and all of its messages.
        conn = open_reader(self.path)
        try:
            conn.execute("BEGIN")
            reader = ConversationReader(conn)
            session = reader.session(session_id)
            messages = reader.messages(session_id, -1, 0)
            conn.execute("COMMIT")
        finally:
            conn.close()
        return write_export(self.exports_dir, session, messages, fmt), len(messages)


ksi_plugin = ConversationPlugin
