"""A failing disk is answered as what it is: `storage_error` (with `retry_after_s`), the plugin
shows as degraded in system:health until a write commits again, and start-up says when the disk
is full. A real full disk where the test may mount a small tmpfs (root), else SQLite's
`max_page_count` (the test-only `plugins.state.max_page_count`) fills the database instead."""
from __future__ import annotations

import errno
import os
import sqlite3
import subprocess

import pytest

from conftest import data_of

BIG = "x" * 32_768


def _fill(path) -> None:
    """Write `path` until the filesystem holding it is full."""
    with open(path, "wb", buffering=0) as ballast:
        chunk = b"\0" * 65_536
        try:
            while True:
                ballast.write(chunk)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
        try:  # the last few bytes too
            while True:
                ballast.write(b"\0" * 512)
        except OSError:
            pass


def _write_until_refused(client, namespace: str = "global", tries: int = 400) -> tuple[list, dict]:
    acked = []
    for n in range(tries):
        reply = client.request("state:set", {"key": f"big{n}", "value": BIG,
                                             "namespace": namespace})
        if "error" in reply:
            return acked, reply["error"]
        acked.append(f"big{n}")
    raise AssertionError(f"{tries} writes of {len(BIG)} bytes never filled the database")


def _health(daemon) -> dict:
    return data_of(daemon.request("system:health"))


@pytest.fixture
def small_disk(workdir):
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = workdir / "disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)],
                      capture_output=True).returncode != 0:
        pytest.skip("mounting a tmpfs is not permitted here")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_a_full_disk_answers_storage_error_and_degrades_until_space_returns(daemon_factory,
                                                                           small_disk):
    daemon = daemon_factory(config={"plugins": {"state": {"db_path": str(small_disk / "state.db")}}})
    with daemon.client() as client:
        assert data_of(client.request("state:set", {"key": "before", "value": 1}))["version"] == 1
        _fill(small_disk / "ballast")
        acked, error = _write_until_refused(client)
        assert error["code"] == "storage_error", error
        assert "full" in error["message"], error
        assert error["details"]["retry_after_s"] > 0
        health = _health(daemon)
        assert health["status"] == "degraded", health
        assert health["plugins"]["degraded"] == 1
        [entry] = health["degraded"]
        assert entry["plugin"] == "state" and "full" in entry["reason"], health
        # Reads go on, and nothing acknowledged is missing.
        assert data_of(client.request("state:get", {"key": "before"}))["value"] == 1
        for key in acked:
            assert data_of(client.request("state:get", {"key": key}))["found"] is True
        (small_disk / "ballast").unlink()
        assert data_of(client.request("state:set", {"key": "after", "value": 2}))["version"] == 1
        health = _health(daemon)
        assert (health["status"], health["degraded"], health["plugins"]["degraded"]) == \
            ("healthy", [], 0)
    assert daemon.stop() == 0


def test_a_start_on_a_full_disk_says_the_disk_is_full(daemon_factory, small_disk):
    config = {"plugins": {"state": {"db_path": str(small_disk / "state.db")}}}
    daemon = daemon_factory(config=config)
    assert data_of(daemon.request("state:set", {"key": "k", "value": 1}))["version"] == 1
    assert daemon.stop() == 0
    _fill(small_disk / "ballast")
    again = daemon_factory(config=config, wait=False, subdir="again")
    assert again.wait(30) == 1
    output = again.read_output()
    assert "disk holding it is full" in output, output
    assert "check its permissions" not in output.lower(), output


def test_a_database_at_its_page_limit_answers_storage_error_until_it_has_room(daemon_factory):
    daemon = daemon_factory(config={"plugins": {"state": {"max_page_count": 64}}})
    with daemon.client() as client:
        acked, error = _write_until_refused(client, namespace="filling")
        assert error["code"] == "storage_error", error
        assert error["details"]["sqlite_error"] == "SQLITE_FULL"
        assert "database or disk is full" in error["message"]
        health = _health(daemon)
        assert health["status"] == "degraded" and health["degraded"][0]["plugin"] == "state"
        # Something else than a write of a key does not cure it: only a write that commits.
        assert data_of(client.request("state:get", {"key": acked[0], "namespace": "filling"}))[
            "found"] is True
        assert _health(daemon)["status"] == "degraded"
        assert data_of(client.request("state:clear", {"namespace": "filling"}))["deleted"] == \
            len(acked)
        assert _health(daemon)["status"] == "healthy"
        assert data_of(client.request("state:set", {"key": "fits", "value": BIG}))["version"] == 1


def test_a_zero_byte_database_starts_empty_with_a_warning_naming_it(daemon_factory, workdir):
    db = workdir / "var" / "db" / "state.db"
    db.parent.mkdir(parents=True)
    db.touch()
    daemon = daemon_factory()
    assert data_of(daemon.request("state:get", {"key": "k"}))["found"] is False
    output = daemon.read_output()
    assert "database_file_empty" in output and str(db) in output, output


def test_a_full_disk_under_the_conversation_store_degrades_it_until_a_turn_commits(
        daemon_factory, small_disk):
    daemon = daemon_factory(config={"plugins": {"conversation": {
        "db_path": str(small_disk / "conversations.db")}}})
    turn = {"session_id": "full", "role": "user", "content": BIG}
    with daemon.client() as client:
        data_of(client.request("conversation:append", turn))
        _fill(small_disk / "ballast")
        for _ in range(400):
            reply = client.request("conversation:append", turn)
            if "error" in reply:
                break
        else:
            raise AssertionError("400 turns never filled the disk")
        assert reply["error"]["code"] == "storage_error", reply
        [entry] = _health(daemon)["degraded"]
        assert entry["plugin"] == "conversation" and "full" in entry["reason"], entry
        (small_disk / "ballast").unlink()
        data_of(client.request("conversation:append", turn))
        assert _health(daemon)["status"] == "healthy"
    assert daemon.stop() == 0


@pytest.mark.daemon("inprocess")
def test_a_read_of_a_damaged_page_answers_storage_error_and_the_daemon_goes_on(
        daemon_factory, workdir):
    daemon = daemon_factory()
    for n in range(300):
        data_of(daemon.request("state:set", {"namespace": "old", "key": f"k{n:03}",
                                             "value": "v" * 200}))
    assert daemon.stop() == 0
    db = workdir / "var" / "db" / "state.db"
    with sqlite3.connect(db) as conn:  # every page in the main file, none left in the WAL
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    pages = db.stat().st_size // 4096
    daemon.start()  # its integrity check passes; the keys are in no cache yet
    with open(db, "r+b") as damaged:  # what a failing disk leaves: pages of garbage
        for page in range(2, pages):
            damaged.seek(page * 4096)
            damaged.write(b"\xff" * 4096)
    reply = daemon.request("state:get", {"namespace": "old", "key": "k150"})
    assert reply["error"]["code"] == "storage_error", reply
    assert reply["error"]["details"]["sqlite_error"] == "SQLITE_CORRUPT"
    assert "could not be read" in reply["error"]["message"]
    assert daemon.request("state:list", {"namespace": "old"})["error"]["code"] == "storage_error"
    assert "error" not in daemon.request("system:health")  # the connection and daemon go on
