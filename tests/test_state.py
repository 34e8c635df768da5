"""The state events over the real socket, against the real SQLite file."""
from __future__ import annotations

import math
import os
import signal
import sqlite3
import threading
import time

import orjson
import pytest

from conftest import data_of, error_of

UNICODE = "naïve café — 東京 🚀 \u202e"
ROUND_TRIP_VALUES = [
    "123", "", "0", "null", "true", 123, 0, -7, 2 ** 53 + 1, 1.5, -0.25, 1e-300, 3.141592653589793,
    True, False, None, [], {}, [1, "1", None, [True, {"a": 1.0}]],
    {"nested": {"deeper": {"list": [1, 2, {"x": None}], "s": "t"}}, "": "empty key"},
    UNICODE, {"emoji 🚀": ["東京", 2.5]},
]



def query(path, sql: str) -> list:
    """Run one statement on the database file with the sqlite3 module, as a user would."""
    db = sqlite3.connect(path)
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()


def state_db(daemon) -> str:
    return str(daemon.var_dir / "db" / "state.db")


@pytest.mark.daemon("inprocess")
def test_every_json_type_comes_back_exactly(daemon):
    with daemon.client() as client:
        for index, value in enumerate(ROUND_TRIP_VALUES):
            key = f"value-{index}"
            assert data_of(client.request("state:set", {"key": key, "value": value})) == \
                {"namespace": "global", "key": key, "version": 1}
            got = data_of(client.request("state:get", {"key": key}))
            assert got["found"] is True and got["version"] == 1
            assert got["value"] == value and type(got["value"]) is type(value), (value, got)
        text = data_of(client.request("state:get", {"key": "value-0"}))["value"]
        assert text == "123" and isinstance(text, str)
        small = data_of(client.request("state:get", {"key": "value-11"}))["value"]
        assert math.isclose(small, 1e-300, rel_tol=0) and small != 0


@pytest.mark.daemon("inprocess")
def test_missing_key_is_not_found_and_versions_count_writes(daemon):
    with daemon.client() as client:
        assert data_of(client.request("state:get", {"key": "nope"})) == \
            {"namespace": "global", "key": "nope", "found": False, "value": None, "version": None}
        versions = [data_of(client.request("state:set", {"key": "k", "value": n}))["version"]
                    for n in range(4)]
        assert versions == [1, 2, 3, 4]
        assert data_of(client.request("state:delete", {"key": "k"})) == {"deleted": True}
        assert data_of(client.request("state:delete", {"key": "k"})) == {"deleted": False}
        assert data_of(client.request("state:get", {"key": "k"}))["found"] is False
        assert data_of(client.request("state:set", {"key": "k", "value": 9}))["version"] == 1


@pytest.mark.daemon("inprocess")
def test_namespaces_are_isolated(daemon):
    with daemon.client() as client:
        client.request("state:set", {"key": "shared", "value": "in a", "namespace": "a"})
        client.request("state:set", {"key": "shared", "value": "in b", "namespace": "b"})
        client.request("state:set", {"key": "only-a", "value": 1, "namespace": "a"})
        assert data_of(client.request("state:get", {"key": "shared", "namespace": "a"}))[
            "value"] == "in a"
        assert data_of(client.request("state:get", {"key": "shared", "namespace": "b"}))[
            "value"] == "in b"
        assert data_of(client.request("state:get", {"key": "shared"}))["found"] is False
        assert data_of(client.request("state:get", {"key": "only-a", "namespace": "b"}))[
            "found"] is False
        assert data_of(client.request("state:list", {"namespace": "a"})) == \
            {"keys": ["only-a", "shared"], "count": 2}
        assert data_of(client.request("state:clear", {"namespace": "a"})) == {"deleted": 2}
        assert data_of(client.request("state:list", {"namespace": "a"}))["count"] == 0
        assert data_of(client.request("state:get", {"key": "shared", "namespace": "b"}))[
            "value"] == "in b"
        # The namespace is a real column: a key containing ':' does not leak across.
        client.request("state:set", {"key": "b:shared", "value": "colon", "namespace": "x"})
        assert data_of(client.request("state:list", {"namespace": "b"}))["keys"] == ["shared"]
    rows = query(state_db(daemon), "SELECT namespace, key FROM state ORDER BY namespace")
    assert rows == [("b", "shared"), ("x", "b:shared")]


@pytest.mark.daemon("inprocess")
def test_list_with_prefix_and_limit(daemon):
    with daemon.client() as client:
        for key in ["user:1", "user:2", "user:10", "users", "admin:1", "user:3"]:
            client.request("state:set", {"key": key, "value": key, "namespace": "n"})
        assert data_of(client.request("state:list", {"namespace": "n", "prefix": "user:"})) == \
            {"keys": ["user:1", "user:10", "user:2", "user:3"], "count": 4}
        assert data_of(client.request("state:list", {"namespace": "n", "prefix": "user:",
                                                     "limit": 2}))["keys"] == \
            ["user:1", "user:10"]
        assert data_of(client.request("state:list", {"namespace": "n"}))["count"] == 6
        assert data_of(client.request("state:list", {"namespace": "n", "prefix": "zzz"})) == \
            {"keys": [], "count": 0}


@pytest.mark.daemon("inprocess")
def test_compare_and_set_answers_conflict(daemon):
    with daemon.client() as client:
        assert data_of(client.request("state:set", {"key": "c", "value": "first",
                                                    "if_version": 0}))["version"] == 1
        error = error_of(client.request("state:set", {"key": "c", "value": "again",
                                                      "if_version": 0}))
        assert error["code"] == "conflict" and error["details"]["current_version"] == 1
        assert data_of(client.request("state:set", {"key": "c", "value": "second",
                                                    "if_version": 1}))["version"] == 2
        error = error_of(client.request("state:set", {"key": "c", "value": "stale",
                                                      "if_version": 1}))
        assert error["code"] == "conflict"
        got = data_of(client.request("state:get", {"key": "c"}))
        assert (got["value"], got["version"]) == ("second", 2)


@pytest.mark.daemon("inprocess")
def test_bad_keys_and_namespaces_are_validation_errors(daemon):
    bad = [{"key": "", "value": 1}, {"key": "a\nb", "value": 1}, {"key": "tab\there", "value": 1},
           {"key": "x" * 1025, "value": 1}, {"key": "k", "value": 1, "namespace": "ns\x00"},
           {"key": "k", "value": 1, "namespace": ""}, {"key": "k"}, {"key": 5, "value": 1},
           {"key": "k", "value": 1, "ttl_s": -1}, {"key": "k", "value": 1, "if_version": -1}]
    with daemon.client() as client:
        for data in bad:
            assert error_of(client.request("state:set", data))["code"] == "validation_error", data
        assert error_of(client.request("state:get", {"key": "a\x7fb"}))["code"] == \
            "validation_error"
        assert error_of(client.request("state:list", {"namespace": "n", "prefix": "\x1b["}))[
            "code"] == "validation_error"
        # The connection and the daemon still work.
        assert data_of(client.request("state:set", {"key": "ok", "value": 1}))["version"] == 1
        assert data_of(client.request("state:list", {}))["keys"] == ["ok"]


@pytest.mark.daemon("inprocess")
def test_ttl_expiry_hides_then_purges_the_key(daemon_factory):
    daemon = daemon_factory(config={"plugins": {"state": {"purge_interval_s": 0.2}}})
    with daemon.client() as watcher, daemon.client() as client:
        watcher.request("system:subscribe", {"patterns": ["state:changed"]})
        client.request("state:set", {"key": "brief", "value": {"v": 1}, "ttl_s": 0.6})
        client.request("state:set", {"key": "lasting", "value": 2})
        assert data_of(client.request("state:get", {"key": "brief"}))["found"] is True
        assert data_of(client.request("state:list", {}))["keys"] == ["brief", "lasting"]
        time.sleep(0.7)
        assert data_of(client.request("state:get", {"key": "brief"}))["found"] is False
        assert data_of(client.request("state:list", {}))["keys"] == ["lasting"]
        pushes = []
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not any(p["data"]["op"] == "expire"
                                                      for p in pushes):
            pushes.append(watcher.recv())
        assert {"namespace": "global", "key": "brief", "version": 1, "op": "expire"} in \
            [p["data"] for p in pushes]
    # A key without a TTL has no expiry in the file: SQL NULL, not a stand-in value.
    assert query(state_db(daemon), "SELECT key, typeof(expires_at) FROM state") == \
        [("lasting", "null")]


@pytest.mark.daemon("inprocess")
def test_every_change_is_pushed_to_subscribers(daemon):
    with daemon.client() as watcher, daemon.client() as client:
        watcher.request("system:subscribe", {"patterns": ["state:changed"]})
        client.request("state:set", {"key": "a", "value": 1, "namespace": "w"})
        client.request("state:set", {"key": "a", "value": 2, "namespace": "w"})
        client.request("state:delete", {"key": "a", "namespace": "w"})
        client.request("state:set", {"key": "b", "value": 3, "namespace": "w"})
        client.request("state:clear", {"namespace": "w"})
        seen = [watcher.recv() for _ in range(5)]
    assert all(p["type"] == "event" and p["event"] == "state:changed" for p in seen)
    assert [(p["data"]["key"], p["data"]["version"], p["data"]["op"]) for p in seen] == [
        ("a", 1, "set"), ("a", 2, "set"), ("a", 2, "delete"), ("b", 1, "set"),
        (None, None, "clear")]
    assert seen[-1]["data"]["deleted"] == 1


@pytest.mark.daemon("inprocess")
def test_values_survive_a_restart(daemon_factory):
    daemon = daemon_factory()
    with daemon.client() as client:
        for index, value in enumerate(ROUND_TRIP_VALUES):
            client.request("state:set", {"key": f"k{index}", "value": value, "namespace": "p"})
    assert daemon.stop() == 0
    daemon = daemon_factory()
    with daemon.client() as client:
        for index, value in enumerate(ROUND_TRIP_VALUES):
            got = data_of(client.request("state:get", {"key": f"k{index}", "namespace": "p"}))
            assert got["value"] == value and type(got["value"]) is type(value)
        # The writer remembers versions only from its own writes: after a restart it reads them.
        again = data_of(client.request("state:set", {"key": "k0", "value": 2, "namespace": "p"}))
        assert again["version"] == 2


def _write_until_killed(daemon, worker: int, cycle: int, acked: dict, errors: list) -> None:
    """Write increasing values; record each write only once its reply says it committed."""
    try:
        client = daemon.client(timeout=20)
    except OSError as exc:
        errors.append(exc)
        return
    counter_key = f"counter-{worker}"
    n = 0
    try:
        while True:
            n += 1
            reply = client.request("state:set", {"key": f"c{cycle}-w{worker}-{n:06d}",
                                                 "value": n, "namespace": "crash"})
            if "data" not in reply:
                errors.append(reply)
                return
            acked[worker]["keys"].append(f"c{cycle}-w{worker}-{n:06d}")
            reply = client.request("state:set", {"key": counter_key, "value": n,
                                                 "namespace": "crash"})
            if "data" not in reply:
                errors.append(reply)
                return
            acked[worker]["counter"] = n
    except (ConnectionError, OSError):
        return  # the daemon was killed: the write in flight was never acknowledged
    finally:
        client.close()


@pytest.mark.parametrize("synchronous", ["NORMAL", "FULL"])
def test_kill_9_loses_no_acknowledged_write(daemon_factory, synchronous):
    config = {"plugins": {"state": {"synchronous": synchronous}}}
    counters = {worker: 0 for worker in range(8)}
    for cycle in range(5):
        daemon = daemon_factory(config=config)
        acked = {worker: {"keys": [], "counter": None} for worker in range(8)}
        errors: list = []
        threads = [threading.Thread(target=_write_until_killed,
                                    args=(daemon, worker, cycle, acked, errors))
                   for worker in range(8)]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 10
        while sum(len(a["keys"]) for a in acked.values()) < 400 and time.monotonic() < deadline:
            time.sleep(0.02)
        os.kill(daemon.proc.pid, signal.SIGKILL)
        daemon.proc.wait()
        for thread in threads:
            thread.join(10)
        assert not errors, errors
        assert sum(len(a["keys"]) for a in acked.values()) >= 400
        assert query(state_db(daemon), "PRAGMA integrity_check") == [("ok",)]

        daemon = daemon_factory(config=config)
        with daemon.client() as client:
            for worker, record in acked.items():
                stored = set(data_of(client.request("state:list", {
                    "namespace": "crash", "prefix": f"c{cycle}-w{worker}-",
                    "limit": 100_000}))["keys"])
                missing = [key for key in record["keys"] if key not in stored]
                assert not missing, f"cycle {cycle}: acknowledged writes lost: {missing[:5]}"
                counter = data_of(client.request("state:get", {"key": f"counter-{worker}",
                                                              "namespace": "crash"}))
                if record["counter"] is not None:
                    assert counter["value"] >= record["counter"]
                    counters[worker] = counter["value"]
        daemon.stop()
    assert all(value > 0 for value in counters.values())


def test_corrupt_database_stops_start_up_and_is_left_alone(daemon_factory, workdir):
    db_dir = workdir / "var" / "db"
    db_dir.mkdir(parents=True)
    garbage = b"this is not an SQLite database " * 400
    (db_dir / "state.db").write_bytes(garbage)
    daemon = daemon_factory(wait=False)
    assert daemon.wait(30) != 0
    output = daemon.read_output()
    assert "state.db" in output and "file is not a database" in output
    assert (db_dir / "state.db").read_bytes() == garbage


def test_damaged_pages_fail_the_integrity_check(daemon_factory, workdir):
    daemon = daemon_factory()
    with daemon.client() as client:
        for n in range(300):
            client.request("state:set", {"key": f"k{n:04d}", "value": "x" * 200})
    daemon.stop()
    path = workdir / "var" / "db" / "state.db"
    db = sqlite3.connect(path)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    raw = bytearray(path.read_bytes())
    page = 4096
    assert len(raw) > 4 * page
    for start in range(page, len(raw), page):  # scribble over every b-tree page's cells
        for offset in range(start + 8, start + 200):
            raw[offset] = 0xA5
    path.write_bytes(bytes(raw))
    daemon = daemon_factory(wait=False)
    assert daemon.wait(30) != 0
    assert "integrity_check" in daemon.read_output() or "malformed" in daemon.read_output()
    assert path.read_bytes() == bytes(raw)


@pytest.mark.daemon("inprocess")
def test_audit_records_who_changed_what(daemon):  # on by default
    with daemon.client() as client:
        set_reply = client.request("state:set", {"key": "a", "value": 1, "namespace": "au"},
                                   correlation_id="audit-1")
        assert "data" in set_reply
        client.request("state:delete", {"key": "a", "namespace": "au"})
        client.request("state:set", {"key": "b", "value": 1, "namespace": "au"})
        client.request("state:clear", {"namespace": "au"})
        reply = data_of(client.request("state:audit", {"namespace": "au"}))
    assert reply["enabled"] is True
    entries = reply["entries"]
    assert [(e["key"], e["op"], e["version"]) for e in entries] == [
        ("a", "set", 1), ("a", "delete", 1), ("b", "set", 1), (None, "clear", None)]
    assert all(e["peer_pid"] == os.getpid() and e["peer_uid"] == os.getuid() for e in entries)
    assert entries[0]["correlation_id"] == "audit-1"
    assert all(e["agent_id"] is None for e in entries)  # a client's own requests
    assert all(abs(e["at"] - time.time()) < 60 for e in entries)
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        query(state_db(daemon), "UPDATE state_audit SET op = 'nothing'")
    with pytest.raises(sqlite3.DatabaseError, match="retention window"):
        query(state_db(daemon), "DELETE FROM state_audit")


@pytest.mark.daemon("inprocess")
def test_an_agents_tool_call_is_audited_as_the_agents(daemon):
    with daemon.client(timeout=30) as client:
        data_of(client.request("agent:spawn", {"agent_id": "keeper", "config": {
            "name": "keeper", "tools": ["state:set"]}}))
        data_of(client.request("agent:send", {
            "agent_id": "keeper", "wait": True, "timeout_s": 20,
            "content": 'Note it.\n/tool state:set {"namespace": "notes", "key": "k", '
                       '"value": 42}'}))
        entries = data_of(client.request("state:audit", {"namespace": "notes"}))["entries"]
    assert [(e["key"], e["op"], e["agent_id"]) for e in entries] == [("k", "set", "keeper")]


@pytest.mark.daemon("inprocess")
def test_audit_can_be_turned_off(daemon_factory):
    daemon = daemon_factory(config={"plugins": {"state": {"audit": False}}})
    with daemon.client() as client:
        client.request("state:set", {"key": "a", "value": 1})
        assert data_of(client.request("state:audit", {})) == \
            {"enabled": False, "entries": [], "count": 0}


@pytest.mark.daemon("inprocess")
def test_the_audit_keeps_its_newest_rows_and_forgets_the_rest(daemon_factory):
    daemon = daemon_factory(config={"plugins": {"state": {
        "audit_keep_rows": 3, "purge_interval_s": 0.05}}})
    with daemon.client() as client:
        for n in range(10):
            data_of(client.request("state:set", {"key": f"k{n}", "value": n, "namespace": "r"}))
        deadline = time.monotonic() + 10
        while data_of(client.request("state:audit", {"namespace": "r"}))["count"] > 3:
            assert time.monotonic() < deadline, "the audit was not pruned"
            time.sleep(0.05)
        kept = data_of(client.request("state:audit", {"namespace": "r"}))["entries"]
    assert [e["key"] for e in kept] == ["k7", "k8", "k9"]


def _read_your_writes(daemon, worker: int, rounds: int, failures: list) -> None:
    with daemon.client() as writer, daemon.client() as reader:
        for n in range(1, rounds + 1):
            key = "hot" if worker % 2 else f"own-{worker}"
            reply = writer.request("state:set", {"key": key, "value": [worker, n],
                                                 "namespace": "ryw"})
            if "data" not in reply:
                failures.append(reply)
                return
            got = data_of(reader.request("state:get", {"key": key, "namespace": "ryw"}))
            if got["version"] < reply["data"]["version"]:
                failures.append((worker, n, reply["data"], got))
            if key != "hot" and got["value"] != [worker, n]:
                failures.append((worker, n, got))
            if n % 25 == 0 and key != "hot":  # "hot" is never deleted: its versions only grow
                writer.request("state:delete", {"key": key, "namespace": "ryw"})
                if data_of(reader.request("state:get", {"key": key, "namespace": "ryw"}))[
                        "found"]:
                    failures.append((worker, n, "deleted key still found"))


@pytest.mark.daemon("inprocess")
def test_a_read_after_an_acknowledged_write_sees_it(daemon):
    """From any connection, while other connections write the same and other keys."""
    failures: list = []
    threads = [threading.Thread(target=_read_your_writes, args=(daemon, worker, 150, failures))
               for worker in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not failures, failures[:5]


@pytest.mark.daemon("inprocess")
def test_a_write_stuck_behind_a_lock_answers_timeout_then_commits(daemon_factory):
    daemon = daemon_factory(config={"daemon": {"event_timeout": 1.0}})
    with daemon.client() as client:
        client.request("state:set", {"key": "before", "value": 1})
        blocker = sqlite3.connect(state_db(daemon), isolation_level=None)
        try:
            blocker.execute("BEGIN IMMEDIATE")  # another process holds the write lock
            started = time.monotonic()
            reply = client.request("state:set", {"key": "stuck", "value": "late"})
            assert error_of(reply)["code"] == "timeout"
            waited = time.monotonic() - started
            # Reads never wait for the writer, even now.
            assert data_of(client.request("state:get", {"key": "before"}))["value"] == 1
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        assert 0.9 <= waited < 8
        deadline = time.monotonic() + 10
        while not data_of(client.request("state:get", {"key": "stuck"}))["found"]:
            assert time.monotonic() < deadline, "the timed-out write never committed"
            time.sleep(0.05)
        assert data_of(client.request("state:get", {"key": "stuck"}))["value"] == "late"
        assert data_of(client.request("state:set", {"key": "after", "value": 2}))["version"] == 1


@pytest.mark.daemon("inprocess")
def test_writes_sent_together_count_versions_in_order(daemon_factory):
    """Writes that arrive in one burst share a commit (and, for plain sets, a statement); each
    still gets its own version, a key written twice in one burst included."""
    keys = ["hot", "cold", "hot", "hot", "warm", "cold", "hot"] * 6
    # No purge sweep during the test: it would announce the expiry of "warm" among the sets.
    daemon = daemon_factory(config={"plugins": {"state": {"purge_interval_s": 3600}}})
    with daemon.client() as watcher, daemon.client() as client:
        watcher.request("system:subscribe", {"patterns": ["state:changed"]})
        client.request("state:set", {"key": "warm", "value": 0, "namespace": "burst",
                                     "ttl_s": 0.05})
        time.sleep(0.1)  # "warm" has expired: its next write starts again at version 1
        client.send_raw(b"".join(
            orjson.dumps({"event": "state:set", "correlation_id": f"w{n}",
                          "data": {"key": key, "value": [key, n], "namespace": "burst"}}) + b"\n"
            for n, key in enumerate(keys)))
        replies = {reply["correlation_id"]: data_of(reply)
                   for reply in (client.recv_reply() for _ in keys)}
        expected, seen = {}, {}
        for n, key in enumerate(keys):
            expected[key] = expected.get(key, 0) + 1
            assert replies[f"w{n}"] == {"namespace": "burst", "key": key,
                                        "version": expected[key]}
        for key, version in expected.items():
            got = data_of(client.request("state:get", {"key": key, "namespace": "burst"}))
            last = max(n for n, k in enumerate(keys) if k == key)
            assert (got["value"], got["version"]) == ([key, last], version)
        pushes = [watcher.recv()["data"] for _ in range(len(keys) + 1)]
    for push in pushes[1:]:
        seen[push["key"]] = seen.get(push["key"], 0) + 1
        assert push == {"namespace": "burst", "key": push["key"], "version": seen[push["key"]],
                        "op": "set"}
    assert seen == expected


@pytest.mark.daemon("inprocess")
def test_a_burst_mixing_expiring_and_lasting_keys_stores_each_expiry(daemon):
    """Plain sets sharing one statement: the rows without a TTL store NULL, the others their
    expiry, whichever kind comes first in the burst; a key written twice keeps its last."""
    writes = [("lasting-1", None), ("brief-1", 600), ("lasting-2", None), ("brief-2", 900),
              ("brief-1", 300)]
    with daemon.client() as client:
        client.send_raw(b"".join(
            orjson.dumps({"event": "state:set", "correlation_id": f"w{n}",
                          "data": {"key": key, "value": n, "namespace": "mix",
                                   **({} if ttl is None else {"ttl_s": ttl})}}) + b"\n"
            for n, (key, ttl) in enumerate(writes)))
        replies = {reply["correlation_id"]: data_of(reply)["version"]
                   for reply in (client.recv_reply() for _ in writes)}
        assert replies == {"w0": 1, "w1": 1, "w2": 1, "w3": 1, "w4": 2}
        assert [data_of(client.request("state:get", {"key": key, "namespace": "mix"}))["value"]
                for key in ("lasting-1", "brief-1", "lasting-2", "brief-2")] == [0, 4, 2, 3]
    rows = dict(query(state_db(daemon), "SELECT key, expires_at - updated_at FROM state"))
    assert rows["lasting-1"] is None and rows["lasting-2"] is None
    assert math.isclose(rows["brief-1"], 300, abs_tol=5)
    assert math.isclose(rows["brief-2"], 900, abs_tol=5)


def test_a_rolled_back_group_leaves_no_remembered_version(tmp_path):
    """The writer remembers each key's version to skip reading it back; a group that fails
    mid-way is rolled back and run again write by write, and what it remembered from the failed
    run must go with it, or the versions would skip numbers the table never held."""
    import asyncio

    from ksi_daemon.plugins.state.store import KnownVersions, create_schema, set_plain
    from ksi_daemon.storage.plugin_database import PluginDatabase

    def fails(conn):
        raise RuntimeError("this op fails after its neighbour wrote")

    async def one_group():
        known = KnownVersions()
        database = PluginDatabase.open(tmp_path / "state.db", name="state",
                                       synchronous="NORMAL", create_schema=create_schema,
                                       deadline_s=10, after_rollback=known.forget_all)
        writer = database.writer
        try:  # submitted in one pass of the loop: one group
            futures = [writer.submit(set_plain, known, "ns", "k", '"first"', None, None),
                       writer.submit(fails),
                       writer.submit(set_plain, known, "ns", "k", '"second"', None, None)]
            return await asyncio.gather(*futures, return_exceptions=True), writer.commits
        finally:
            await database.close()

    (first, failure, second), commits = asyncio.run(one_group())
    assert commits == 1
    assert isinstance(failure, RuntimeError)
    assert (first["version"], second["version"]) == (1, 2)
    assert query(str(tmp_path / "state.db"), "SELECT value, version FROM state") == \
        [('"second"', 2)]


def test_the_checkpointer_keeps_the_wal_bounded_without_the_writer_checkpointing(tmp_path):
    """SQLite's automatic checkpoint is off on the writer's connection (it ran inside a COMMIT,
    stalling every queued write); the writer's checkpointer thread checkpoints instead, so the
    WAL is reused instead of growing with every commit."""
    import asyncio

    from ksi_daemon.plugins.state.store import KnownVersions, create_schema, set_plain
    from ksi_daemon.storage.plugin_database import PluginDatabase
    from ksi_daemon.storage.wal_checkpointer import CHECKPOINT_EVERY_COMMITS

    commits = 3 * CHECKPOINT_EVERY_COMMITS
    wal = tmp_path / "state.db-wal"

    async def one_commit_each():
        known = KnownVersions()
        database = PluginDatabase.open(tmp_path / "state.db", name="state",
                                       synchronous="NORMAL", create_schema=create_schema,
                                       deadline_s=10, after_rollback=known.forget_all)
        writer = database.writer
        try:
            assert writer.checkpointer is not None
            largest_wal = 0
            for n in range(commits):  # awaited one by one: one commit each
                await writer.submit(set_plain, known, "ns", f"k{n % 50}", f'"{n}"', None, None)
                largest_wal = max(largest_wal, wal.stat().st_size)
            return largest_wal, writer.checkpointer.checkpoints
        finally:
            await database.close()

    largest_wal, checkpoints = asyncio.run(one_commit_each())
    assert checkpoints >= 2
    # Each commit appends at least one 4 KiB page: unchecked, the WAL would reach 6 MB.
    assert largest_wal < 0.75 * commits * 4096
    assert query(str(tmp_path / "state.db"), "SELECT count(*) FROM state") == [(50,)]


def test_sigterm_answers_writes_in_flight_and_keeps_the_acknowledged(daemon_factory):
    """A stop while writes are queued: every request the daemon read gets one reply (its commit,
    or `unavailable` once the daemon stopped taking requests), and every acknowledged write is
    stored. Lines still unread in the socket when it closes get none (the client sees the
    connection end)."""
    daemon = daemon_factory(config={"plugins": {"state": {"synchronous": "FULL"}}})
    clients = [daemon.client(timeout=20) for _ in range(4)]
    for number, client in enumerate(clients):
        client.send_raw(b"".join(
            orjson.dumps({"event": "state:set", "correlation_id": f"c{number}-{n}",
                          "data": {"key": f"c{number}-{n}", "value": n, "namespace": "stop"}})
            + b"\n" for n in range(300)))
    daemon.proc.send_signal(signal.SIGTERM)
    acknowledged, answered = [], []
    for client in clients:
        while True:
            try:
                reply = client.recv_reply()
            except (ConnectionError, EOFError, OSError):
                break
            answered.append(reply["correlation_id"])
            if "error" in reply:
                assert reply["error"]["code"] == "unavailable", reply
            else:
                acknowledged.append(reply["data"]["key"])
        client.close()
    assert daemon.wait() == 0
    assert len(answered) == len(set(answered))
    stored = {key for (key,) in query(state_db(daemon),
                                      "SELECT key FROM state WHERE namespace = 'stop'")}
    assert acknowledged and set(acknowledged) <= stored
    # A write the daemon committed was answered before its connection closed (correlation id
    # and key are the same name): the stop waited for the replies the writer owed.
    assert stored <= set(answered)
