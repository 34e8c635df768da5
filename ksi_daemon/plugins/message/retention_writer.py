"""Retained messages go to disk in one writer op per pass of the event loop, not one per publish.

`message:publish` is a plain (sync) handler: it delivers, answers and hands its message to this
batch, without waiting for the commit. Measured with 100 subscribers, waiting for the commit
(a task, a future and a wake-up per publish) cost about a third of the fan-out throughput.
What that gives up: a daemon killed abruptly (SIGKILL, power loss) loses the retained copies of
the last few milliseconds of messages (their live deliveries already happened). A clean stop
loses nothing: `flush()` runs at shutdown and the writer commits everything queued before it
closes.
"""
from __future__ import annotations

import asyncio

import structlog

from ...storage.sqlite_writer import SqliteWriter, WriterStopped
from .store import insert_messages

log = structlog.get_logger("ksi.plugin.message")


class RetentionWriter:
    def __init__(self, writer: SqliteWriter):
        self.writer = writer
        self._rows: list[tuple[int, dict]] = []
        # Per topic, the oldest seq still kept; a forgotten topic keeps nothing older than the
        # publish that pushed it out (a later publish to it in the same batch comes after that).
        self._oldest_kept: dict[str, int] = {}

    def add(self, seq: int, message: dict, oldest_kept: int, forgotten: list[str]) -> None:
        if not self._rows:
            asyncio.get_running_loop().call_soon(self.flush)
        self._rows.append((seq, message))
        for topic in forgotten:
            self._oldest_kept[topic] = seq
        self._oldest_kept[message["topic"]] = oldest_kept

    def flush(self) -> None:
        if not self._rows:
            return
        rows, oldest_kept = self._rows, self._oldest_kept
        self._rows, self._oldest_kept = [], {}
        try:
            self.writer.submit(insert_messages, rows, oldest_kept).add_done_callback(
                lambda done, count=len(rows): _log_failure(done, count))
        except WriterStopped:
            log.error("retained_messages_not_stored", messages=len(rows),
                      reason="the database writer had already stopped")


def _log_failure(done: asyncio.Future, count: int) -> None:
    if not done.cancelled() and done.exception() is not None:
        log.error("retained_messages_not_stored", messages=count, error=repr(done.exception()))
