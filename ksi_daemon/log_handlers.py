"""Log handlers that keep quiet when the disk is full.

The standard handlers answer a failed write with a traceback on stderr, once per record: with the
disk full that is a traceback for every log line, on a stderr that is often a file on the same
full disk. These drop the line instead, count it, say so once on stderr, and when writing works
again the log file itself records how many lines are missing.
"""
from __future__ import annotations

import datetime
import errno
import logging
import os
import sys

import orjson

# A write failing with one of these is lost space, not a bug: drop the line, count it.
NO_ROOM = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def say_once_on_stderr(message: str) -> None:
    try:
        sys.stderr.write(f"ksi: {message}\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass  # stderr is on the full disk too, or closed: nobody to tell


class LineFile(logging.Handler):
    """Appends each record as one line to `path` with a single unbuffered write, so a failed
    write leaves nothing behind in a buffer to be written twice or half later. While the disk
    is full the lines are dropped and counted (`dropped`, all told); the first line written
    after that is a `log_lines_dropped` record saying how many are missing there."""

    def __init__(self, path, mode: int = 0o600):
        super().__init__()
        self.path = str(path)
        self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, mode)
        self.dropped = 0
        self.missing = 0  # dropped since the last line that made it to the file
        self._cut_line = False  # a write was cut short: the next one starts a fresh line

    def emit(self, record: logging.LogRecord) -> None:
        if self.fd < 0:
            return  # closed at exit while another thread still logs
        try:
            line = (self.format(record) + "\n").encode("utf-8", "replace")
        except Exception:  # noqa: BLE001 - a record that cannot be formatted: the usual report
            self.handleError(record)
            return
        if self.missing and not self._write(self._note_of_missing_lines()):
            self._drop()
        elif self._write(line):
            self.missing = 0
        else:
            self._drop()

    def _drop(self) -> None:
        if not self.missing:
            say_once_on_stderr(f"the disk holding {self.path} is full: log lines are dropped "
                               "(and counted) until there is room again")
        self.dropped += 1
        self.missing += 1

    def _write(self, line: bytes) -> bool:
        """Write all of `line`; False when the disk has no room for it."""
        if self._cut_line:
            line = b"\n" + line
        written = 0
        try:
            while written < len(line):
                written += os.write(self.fd, line[written:])
        except OSError as exc:
            if exc.errno not in NO_ROOM:
                raise
            self._cut_line = written > 0
            return False
        self._cut_line = False
        return True

    def _note_of_missing_lines(self) -> bytes:
        return orjson.dumps({
            "event": "log_lines_dropped", "level": "warning", "count": self.missing,
            "reason": "the disk was full",
            "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat()}) + b"\n"

    def handleError(self, record: logging.LogRecord) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, OSError) and exc.errno in NO_ROOM:
            self._drop()
            return
        super().handleError(record)

    def close(self) -> None:
        try:
            if self.fd >= 0:
                os.close(self.fd)
                self.fd = -1
        finally:
            super().close()


class QuietStream(logging.StreamHandler):
    """The console handler: a line it cannot write for lack of room (stderr redirected to a
    file on a full disk) or because the reader went away is dropped without a traceback."""

    def handleError(self, record: logging.LogRecord) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, OSError) and (exc.errno in NO_ROOM or exc.errno == errno.EPIPE):
            return
        super().handleError(record)
