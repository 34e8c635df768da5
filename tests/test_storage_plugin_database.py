"""PluginDatabase opens every piece of a plugin's database and closes them all: the checked
writer connection and its thread, the WAL checkpointer, the read-only reader, the deadline
sweep (which the agent writer, opened by hand, lacked)."""
from __future__ import annotations

import asyncio
import sqlite3
import threading

import pytest

from ksi_daemon.protocol import TIMEOUT, KSIError
from ksi_daemon.storage.plugin_database import PluginDatabase


def _schema(conn) -> None:
    conn.execute("CREATE TABLE IF NOT EXISTS t (k TEXT PRIMARY KEY, v INTEGER)")


def _put(conn, k, v) -> int:
    conn.execute("INSERT INTO t VALUES (?, ?) ON CONFLICT (k) DO UPDATE SET v = excluded.v",
                 (k, v))
    return v


def _threads() -> set[str]:
    return {thread.name for thread in threading.enumerate()}


def test_open_starts_every_piece_and_close_stops_them(tmp_path):
    async def scenario():
        database = PluginDatabase.open(tmp_path / "p.db", name="probe", synchronous="NORMAL",
                                       create_schema=_schema, deadline_s=5.0,
                                       load=lambda conn: conn.execute(
                                           "SELECT count(*) FROM t").fetchone()[0])
        assert database.loaded == 0
        assert {"probe-writer", "probe-writer-checkpointer"} <= _threads()
        assert {task.get_name() for task in asyncio.all_tasks()} >= {"probe-write-deadlines"}
        assert await database.writer.submit(_put, "a", 1) == 1
        assert database.reader.execute("SELECT v FROM t").fetchall() == [(1,)]
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            database.reader.execute("INSERT INTO t VALUES ('b', 2)")
        await database.close()
        await asyncio.sleep(0)
        assert not {"probe-writer", "probe-writer-checkpointer"} & _threads()
        assert "probe-write-deadlines" not in {t.get_name() for t in asyncio.all_tasks()}
        assert database.reader is None
    asyncio.run(scenario())


def test_a_write_stuck_behind_a_lock_answers_timeout_from_the_sweep(tmp_path):
    path = tmp_path / "p.db"

    async def scenario():
        database = PluginDatabase.open(path, name="probe", synchronous="NORMAL",
                                       create_schema=_schema, deadline_s=0.3, reader=False)
        assert database.reader is None
        blocker = sqlite3.connect(path, isolation_level=None)
        blocker.execute("BEGIN EXCLUSIVE")
        try:
            with pytest.raises(KSIError) as caught:
                await asyncio.wait_for(database.writer.submit(_put, "a", 1), 5.0)
            assert caught.value.code == TIMEOUT
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        await database.close()
    asyncio.run(scenario())
