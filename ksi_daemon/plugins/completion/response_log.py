"""Each finished completion, appended to var/logs/responses/<session_id>.jsonl.

Files of recently active sessions stay open, and every record is flushed at once, so the file is
complete when the client gets the result. A new session needs a new file, and creating one is the
slow part: on the project's 2-core test machine (ext4) the kernel takes 0.4–0.7 ms to create a
file and 30–50 µs to move one. So a few empty files are made ahead in `responses/.spare/`, in a
worker thread (made on the loop, even after a reply, they held up the next request by as much),
and a new session's file is one of them, moved. Spares left by a crash are used at the next
start; a clean stop removes them.
"""
from __future__ import annotations

import asyncio
import hashlib
import os
import re
from collections import OrderedDict
from pathlib import Path

import orjson

_SAFE_NAME = re.compile(r"[A-Za-z0-9._-]{1,100}")
_FLAGS = os.O_WRONLY | os.O_APPEND | getattr(os, "O_CLOEXEC", 0)
OPEN_FILES = 64
SPARES = 4


class ResponseLog:
    def __init__(self, directory: Path):
        self.directory = directory
        self._files: OrderedDict[str, object] = OrderedDict()
        self._spare_dir = directory / ".spare"
        self._spares: list[str] | None = None  # paths of empty files made ahead; None: not read
        self._restocking = False

    def append(self, session_id: str, record: dict) -> None:
        file = self._files.get(session_id)
        if file is None:
            file = self._open(session_id)
        else:
            self._files.move_to_end(session_id)
        file.write(orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE, default=str))
        file.flush()

    def close(self) -> None:
        while self._files:
            self._files.popitem()[1].close()
        _remove(self._spares or ())
        self._spares = None  # (a restock under way removes what it made)

    def _open(self, session_id: str):
        name = session_id if _SAFE_NAME.fullmatch(session_id) and session_id not in (".", "..") \
            else "session-" + hashlib.sha256(session_id.encode()).hexdigest()
        path = os.path.join(self._directory(), name + ".jsonl")
        try:
            fd = os.open(path, _FLAGS)  # the session's file from an earlier run
        except FileNotFoundError:
            if self._spares:
                os.rename(self._spares.pop(), path)
                fd = os.open(path, _FLAGS)
            else:
                fd = os.open(path, _FLAGS | os.O_CREAT, 0o600)
            self._restock_soon()
        file = self._files[session_id] = open(fd, "ab")
        while len(self._files) > OPEN_FILES:
            self._files.popitem(last=False)[1].close()
        return file

    def _directory(self) -> str:
        if self._spares is None:  # the first file: make the directories, find a crash's spares
            self._spare_dir.mkdir(parents=True, exist_ok=True)
            self._spares = [str(p) for p in self._spare_dir.iterdir() if p.stat().st_size == 0]
        return str(self.directory)

    def _restock_soon(self) -> None:
        if self._restocking or self._spares is None or len(self._spares) >= SPARES:
            return
        self._restocking = True
        made = asyncio.get_running_loop().run_in_executor(
            None, _make_spares, self._spare_dir, SPARES - len(self._spares))
        made.add_done_callback(self._restocked)

    def _restocked(self, made: asyncio.Future) -> None:
        self._restocking = False
        paths = [] if made.cancelled() else made.result()
        if self._spares is None:  # closed meanwhile: a clean stop leaves no spares
            _remove(paths)
        else:
            self._spares.extend(paths)


def _make_spares(directory: Path, count: int) -> list[str]:
    """Up to `count` new empty files (in a worker thread); appends create their own files, and
    report what fails, when none could be made."""
    paths = []
    for _ in range(count):
        path = os.path.join(directory, os.urandom(8).hex())
        try:
            os.close(os.open(path, _FLAGS | os.O_CREAT | os.O_EXCL, 0o600))
        except OSError:
            break
        paths.append(path)
    return paths


def _remove(paths) -> None:
    for path in paths:
        try:
            os.unlink(path)
        except OSError:
            pass
