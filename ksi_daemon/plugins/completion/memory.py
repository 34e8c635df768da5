"""A session's earlier turns: from the conversation store when it runs, else kept in memory.

The store answers `conversation:history` / `conversation:append`. Completion must still work when
the store plugin is absent or failed, so turns are also kept in a bounded in-memory window.
"""
from __future__ import annotations

import hashlib
import queue
import re
import threading
from collections import OrderedDict, deque
from pathlib import Path

import orjson

from ...protocol import UNAVAILABLE, UNKNOWN_EVENT, KSIError

_SAFE_NAME = re.compile(r"[A-Za-z0-9._-]{1,100}")


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


class ResponseLog:
    """Appends each finished completion to var/logs/responses/<session_id>.jsonl.

    Files of recently active sessions stay open, and every record is flushed at once, so the
    file is complete when the client gets the result. Creating a session's file takes a few
    hundred microseconds (a new inode and directory entry): `open_soon` has a thread of its own
    create it while the model answers, so the result does not wait for it. (Handing the open to
    the loop's executor cost the loop ten times what this queue does, 80 µs against 8 in a run
    on the loaded 2-core machine.)
    """
    OPEN_FILES = 64

    def __init__(self, directory: Path):
        self.directory = directory
        self._files: OrderedDict[str, object] = OrderedDict()
        self._asked: set[str] = set()  # handed to the thread, not adopted yet
        self._to_open: queue.SimpleQueue = queue.SimpleQueue()
        self._opened: queue.SimpleQueue = queue.SimpleQueue()  # (session_id, file or None)
        self._thread: threading.Thread | None = None

    def open_soon(self, session_id: str) -> None:
        self._adopt_opened()
        if session_id in self._files or session_id in self._asked:
            return
        if self._thread is None:
            self._thread = threading.Thread(target=self._open_what_is_asked,
                                            name="response-log-opener", daemon=True)
            self._thread.start()
        self._asked.add(session_id)
        self._to_open.put(session_id)

    def append(self, session_id: str, record: dict) -> None:
        self._adopt_opened()
        file = self._files.get(session_id)
        if file is None:  # not opened in time (or the thread failed): open it now
            file = self._keep(session_id, self._open_file(session_id))
        else:
            self._files.move_to_end(session_id)
        file.write(orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE, default=str))
        file.flush()

    def close(self) -> None:
        if self._thread is not None:
            self._to_open.put(None)
            self._thread.join(timeout=1.0)
        self._adopt_opened()
        while self._files:
            self._files.popitem()[1].close()

    # The thread only opens; every change to what is kept happens on the loop, here.
    def _adopt_opened(self) -> None:
        while not self._opened.empty():
            session_id, file = self._opened.get_nowait()
            self._asked.discard(session_id)
            if file is None:
                continue  # append opens it itself, and reports what fails
            if session_id in self._files:  # append came first and opened its own
                file.close()
            else:
                self._keep(session_id, file)

    def _keep(self, session_id: str, file):
        self._files[session_id] = file
        while len(self._files) > self.OPEN_FILES:
            self._files.popitem(last=False)[1].close()
        return file

    def _open_what_is_asked(self) -> None:
        while (session_id := self._to_open.get()) is not None:
            try:
                self._opened.put((session_id, self._open_file(session_id)))
            except OSError:
                self._opened.put((session_id, None))

    def _open_file(self, session_id: str):
        self.directory.mkdir(parents=True, exist_ok=True)
        name = session_id if _SAFE_NAME.fullmatch(session_id) and session_id not in (".", "..") \
            else "session-" + hashlib.sha256(session_id.encode()).hexdigest()
        return open(self.directory / f"{name}.jsonl", "ab")
