"""The writers' contract, on a real database file, for the writer thread (storage/sqlite_writer.py)
and the commit on the event loop (storage/loop_writer.py, the completion journal's): the writes
queued in one pass of the event loop share one commit, each is answered only after it, a read op
queued behind writes sees them, a refused or failing op fails alone, and a stop commits what was
queued."""
from __future__ import annotations

import asyncio
import sqlite3

import pytest

from ksi_daemon.protocol import CONFLICT, KSIError
from ksi_daemon.storage.loop_writer import LoopWriter
from ksi_daemon.storage.plugin_database import PluginDatabase


def _schema(conn) -> None:
    conn.execute("CREATE TABLE IF NOT EXISTS t (k TEXT PRIMARY KEY, v INTEGER NOT NULL)")


def _put(conn, k, v) -> int:
    conn.execute("INSERT INTO t VALUES (?, ?) ON CONFLICT (k) DO UPDATE SET v = excluded.v",
                 (k, v))
    return v


def _get(conn, k):
    row = conn.execute("SELECT v FROM t WHERE k = ?", (k,)).fetchone()
    return None if row is None else row[0]


def _refuse(conn) -> None:
    raise KSIError(CONFLICT, "no")


def _open(path, commit_on_loop):
    return PluginDatabase.open(path, name="probe", synchronous="NORMAL",
                               create_schema=_schema, deadline_s=5.0,
                               commit_on_loop=commit_on_loop)


@pytest.mark.parametrize("commit_on_loop", [False, True], ids=["thread", "loop"])
def test_one_pass_of_writes_is_one_commit_answered_after_it(tmp_path, commit_on_loop):
    async def scenario():
        database = _open(tmp_path / "p.db", commit_on_loop)
        writer = database.writer
        assert isinstance(writer, LoopWriter) == commit_on_loop
        futures = [writer.submit(_put, f"k{n}", n) for n in range(20)]
        read = writer.submit(_get, "k19")
        refused = writer.submit(_refuse)
        failing = writer.submit(_put, "bad", None)  # NOT NULL: fails alone
        assert not any(f.done() for f in futures)  # nothing runs inside submit
        assert await asyncio.gather(*futures) == list(range(20))
        await asyncio.wait([read, refused, failing])
        assert writer.commits == 1
        assert read.result() == 19
        with pytest.raises(KSIError):
            refused.result()
        with pytest.raises(sqlite3.IntegrityError):
            failing.result()
        # The failing op made the group run again with savepoints: still every write stands.
        assert database.reader.execute("SELECT count(*) FROM t").fetchone()[0] == 20
        late = writer.submit(_put, "late", 1)
        await database.close()  # commits what was queued
        assert late.result() == 1
    asyncio.run(scenario())
