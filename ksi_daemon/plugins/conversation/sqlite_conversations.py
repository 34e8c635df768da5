"""The single daemon's conversation store: SQLite, one writer thread, reads inline.

`append` and `append_turn` reply after their commit, like a state write; list, get, history
and search are indexed point or page reads run inline on the event loop; export reads the whole
session and writes a file, so it runs in a worker thread with its own connection. The same
class is a node's local copy under a shared store (`apply_turn`, store_seam.LocalCopy).
"""
from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from ...protocol import NOT_FOUND, UNAVAILABLE, VALIDATION_ERROR, KSIError
# Storage machinery shared with the state plugin (a library, not the state plugin's events).
from ...storage.sqlite_database import open_reader
from ...storage.plugin_database import PluginDatabase
from ...storage.sqlite_writer import WriterStopped
from .export import write_export
from .store import (ConversationReader, append_message, append_turn, apply_turn, create_schema,
                    fts_query_of)


class SqliteConversationStore:
    """A ConversationStore (store_seam.py) on one SQLite file."""

    def __init__(self, path: Path, exports_dir: Path, synchronous: str, deadline_s: float,
                 report_degraded, fresh: bool = False):
        self.path, self.exports_dir = path, exports_dir
        self.synchronous, self.deadline_s = synchronous, deadline_s
        self.report_degraded, self.fresh = report_degraded, fresh
        self.database: PluginDatabase | None = None

    async def open(self) -> None:
        if self.fresh:  # a cache of a shared store: refilled from it, never kept
            for suffix in ("", "-wal", "-shm"):
                Path(f"{self.path}{suffix}").unlink(missing_ok=True)
        self.database = PluginDatabase.open(
            self.path, name="conversation", synchronous=self.synchronous,
            create_schema=create_schema, deadline_s=self.deadline_s,
            report_degraded=self.report_degraded)
        self.writer = self.database.writer
        self.reader = ConversationReader(self.database.reader)

    async def close(self) -> None:
        if self.database is not None:
            await self.database.close()
            self.database = None

    # ---- writes ------------------------------------------------------------------------------

    def append(self, data):
        return self._written(append_message, data.session_id, data.role, data.content,
                             data.model, data.usage, data.request_id, data.metadata,
                             data.tool_calls, data.tool_call_id)

    def append_turn(self, data):
        return self._written(append_turn, data.session_id,
                             [message.model_dump(exclude_none=True) for message in data.messages])

    def apply_turn(self, first_id: int, session_id: str, messages: list[dict], at: float):
        return self._written(apply_turn, first_id, session_id, messages, at)

    def _written(self, op, *args):
        # The writer's future: no task per write.
        try:
            return self.writer.submit(op, *args)
        except WriterStopped:
            raise KSIError(UNAVAILABLE, "the conversation store is shutting down") from None

    # ---- reads -------------------------------------------------------------------------------

    def history(self, data):
        messages = self.reader.latest_messages(data.session_id, data.limit)
        return {"session_id": data.session_id, "messages": messages, "count": len(messages)}

    def list(self, data):
        sessions, total = self.reader.sessions(data.sort, data.limit, data.offset)
        return {"sessions": sessions, "count": len(sessions), "total": total,
                "offset": data.offset, "sort": data.sort}

    def get(self, data):
        session = self._session(data.session_id)
        messages = self.reader.messages(data.session_id, data.limit, data.offset)
        return {**session, "messages": messages, "count": len(messages),
                "total": session["message_count"], "offset": data.offset}

    def search(self, data):
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

    def export(self, data):
        return asyncio.ensure_future(self._exported(data))

    async def _exported(self, data) -> dict:
        self._session(data.session_id)
        path, count = await asyncio.to_thread(self._export, data.session_id, data.format)
        return {"session_id": data.session_id, "format": data.format, "path": str(path),
                "size": path.stat().st_size, "message_count": count}

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
