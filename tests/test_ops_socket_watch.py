"""The socket stays reachable: a socket file deleted or replaced under a running daemon is bound
again within about a second (with a `socket_rebound` warning), for every socket; and
`daemon_control.py status` never calls a daemon running when its socket answers nothing.

Real daemon processes, real sockets, the real command line.
"""
from __future__ import annotations

import os
import signal
import socket
import stat
import time
from pathlib import Path

import orjson
import pytest

from conftest import LineClient, data_of
from test_daemon_control import control  # noqa: F401  (the fixture: daemon_control.py as typed)

REBIND_DEADLINE_S = 5.0  # the watch checks once a second; margin for a loaded machine
# The daemons started here check five times a second: a test waits for a number of checks.
CHECK_INTERVAL_S = 0.2
WATCHING = {"transports": {"unix": {"check_interval_s": CHECK_INTERVAL_S}}}


@pytest.fixture
def daemon(daemon_factory):
    return daemon_factory(WATCHING)


def answers(path: Path) -> bool:
    try:
        with LineClient(path, timeout=2.0) as client:
            return data_of(client.request("system:health"))["status"] == "healthy"
    except OSError:
        return False


def wait_until_answering(path: Path, deadline_s: float = REBIND_DEADLINE_S) -> float:
    """Seconds until `path` answered system:health; fails the test past the deadline."""
    started = time.monotonic()
    while not answers(path):
        assert time.monotonic() - started < deadline_s, f"{path} not bound again"
        time.sleep(0.05)
    return time.monotonic() - started


def inode_at(path: Path) -> int | None:
    try:
        return path.stat().st_ino
    except FileNotFoundError:
        return None


def rebound_warnings(var_dir: Path) -> list[dict]:
    lines = (var_dir / "logs" / "daemon.log").read_bytes().splitlines()
    return [entry for entry in map(orjson.loads, lines) if entry.get("event") == "socket_rebound"]


def test_a_deleted_socket_is_bound_again_and_the_log_says_so(daemon):
    with daemon.client() as opened_before:
        daemon.socket_path.unlink()
        assert not answers(daemon.socket_path)
        waited = wait_until_answering(daemon.socket_path)
        # a connection opened before never noticed
        assert data_of(opened_before.request("system:health"))["status"] == "healthy"
    assert waited < REBIND_DEADLINE_S
    mode = daemon.socket_path.lstat().st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
    [warning] = rebound_warnings(daemon.var_dir)
    assert warning["level"] == "warning"
    assert warning["socket"] == str(daemon.socket_path)
    assert warning["found"] == "nothing (deleted)"


def test_a_socket_replaced_by_a_regular_file_is_taken_back(daemon):
    daemon.socket_path.unlink()
    daemon.socket_path.write_text("not a socket\n")
    wait_until_answering(daemon.socket_path)
    assert rebound_warnings(daemon.var_dir)[-1]["found"] == "a regular file"


def test_a_socket_replaced_by_another_programs_socket_is_taken_back(daemon):
    # What an upstream client did when it thought the daemon dead: its own server on the path.
    impostor = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        daemon.socket_path.unlink()
        impostor.bind(str(daemon.socket_path))
        impostor.listen(1)
        # Asked while the impostor is there, health would wait out its client timeout (the
        # impostor never answers): ask once the path is another socket than the impostor's.
        theirs, started = daemon.socket_path.stat().st_ino, time.monotonic()
        while inode_at(daemon.socket_path) in (theirs, None):
            assert time.monotonic() - started < REBIND_DEADLINE_S, "the impostor stayed"
            time.sleep(0.02)
        wait_until_answering(daemon.socket_path)
    finally:
        impostor.close()
    assert rebound_warnings(daemon.var_dir)[-1]["found"] == "another socket"
    assert daemon.stop() == 0
    assert not daemon.socket_path.exists()  # the daemon's own (rebound) socket, removed at stop


def test_every_socket_is_watched_not_only_the_main_one(daemon_factory, workdir):
    socket_dir = workdir / "ksi"
    daemon = daemon_factory({"transports": {"unix": {**WATCHING["transports"]["unix"],
                                                     "socket_dir": str(socket_dir)}}})
    events = socket_dir / "events.sock"
    events.unlink()
    wait_until_answering(events)
    assert answers(daemon.socket_path)
    assert [w["socket"] for w in rebound_warnings(daemon.var_dir)] == [str(events)]


def test_a_directory_in_the_way_is_reported_and_left_alone_until_it_goes(daemon):
    with daemon.client() as opened_before:
        daemon.socket_path.unlink()
        daemon.socket_path.mkdir()
        time.sleep(10 * CHECK_INTERVAL_S)  # checks enough: reported once, the directory untouched
        assert daemon.socket_path.is_dir()
        assert data_of(opened_before.request("system:health"))["status"] == "healthy"
    lines = (daemon.var_dir / "logs" / "daemon.log").read_bytes().splitlines()
    failures = [e for e in map(orjson.loads, lines) if e.get("event") == "socket_rebind_failed"]
    assert len(failures) == 1 and failures[0]["found"] == "a directory"
    daemon.socket_path.rmdir()
    wait_until_answering(daemon.socket_path)


# ---- status asks the socket ---------------------------------------------------------------------

def test_status_of_a_stopped_daemon_is_not_running(control):  # noqa: F811
    pid = control.started()
    os.kill(pid, signal.SIGSTOP)
    try:
        # (a stopped process never answers: wait 1 s for it, not the default 5)
        result = control.run("status", "--timeout", "1")
        report = orjson.loads(control.run("status", "--json", "--timeout", "1").stdout)
    finally:
        os.kill(pid, signal.SIGCONT)
    assert result.returncode == 4, result.stdout + result.stderr
    assert "does not answer" in result.stdout and "is running" not in result.stdout
    assert report["running"] is False and report["pid"] == pid


def test_status_with_a_socket_file_nobody_listens_on_is_not_running(control):  # noqa: F811
    control.socket_path.parent.mkdir(parents=True, mode=0o700)
    leftover = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    leftover.bind(str(control.socket_path))  # bound, never listening: connect is refused
    try:
        result = control.run("status")
    finally:
        leftover.close()
    assert result.returncode == 3, result.stdout + result.stderr
    assert "not running" in result.stdout


@pytest.mark.parametrize("replacement", ["nothing", "regular file"])
def test_status_while_the_socket_is_gone_never_says_running(control, replacement):  # noqa: F811
    pid = control.started()
    os.kill(pid, signal.SIGSTOP)  # hold the watch, so the path stays broken while status asks
    try:
        control.socket_path.unlink()
        if replacement == "regular file":
            control.socket_path.write_text("x")
        result = control.run("status")
    finally:
        os.kill(pid, signal.SIGCONT)
    assert result.returncode == 4 and "is running" not in result.stdout
    wait_until_answering(control.socket_path)
    assert control.run("status").returncode == 0


def test_the_commands_of_operations_md_run(workdir):
    from doc_commands import run_doc_commands, stop_daemon_in
    try:
        result = run_doc_commands("OPERATIONS.md", "socket-rebound", workdir)
    finally:
        stop_daemon_in(workdir)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "KSI is running" in result.stdout and '"socket_rebound"' in result.stdout
