"""Promise 10: what the daemon keeps under var/ is its owner's alone, whatever the umask; looser
modes found at start are tightened and logged. Checked by reading as another uid (nobody)."""
from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import orjson
import pytest

from conftest import DaemonProcess, data_of

NOBODY = 65534
SECRET = "the-launch-code-is-0000"
needs_root = pytest.mark.skipif(os.getuid() != 0, reason="switching to another uid needs root")


def readable_by_nobody(path: Path) -> bool:
    as_nobody = subprocess.run(
        ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "cat", str(path)],
        capture_output=True, timeout=10)
    return as_nobody.returncode == 0


def loose_modes_under(root: Path) -> list[str]:
    loose = []
    for path in [root, *root.rglob("*")]:
        status = path.lstat()
        if not stat.S_ISLNK(status.st_mode) and stat.S_IMODE(status.st_mode) & 0o077:
            loose.append(f"{path} {stat.S_IMODE(status.st_mode):04o}")
    return loose


def log_records(daemon: DaemonProcess) -> list[dict]:
    return [orjson.loads(line) for line in
            (daemon.var_dir / "logs" / "daemon.log").read_bytes().splitlines()]


@pytest.fixture
def open_workdir(workdir):
    """The test's directory open to everyone (mkdtemp makes it 0700), so only var/'s own modes
    can keep another user out; files made in the test are born world-readable (umask 0)."""
    workdir.chmod(0o755)
    previous = os.umask(0)
    try:
        yield workdir
    finally:
        os.umask(previous)


@needs_root
def test_another_user_cannot_read_the_state_database_or_the_log(open_workdir):
    daemon = DaemonProcess(open_workdir).start()  # inherits umask 0
    try:
        with daemon.client() as client:
            data_of(client.request("state:set", {"key": "launch", "value": SECRET}))
            assert data_of(client.request("state:get", {"key": "launch"}))["value"] == SECRET
        state_files = [p for p in daemon.var_dir.rglob("*") if p.name.startswith("state.db")]
        assert any(p.name == "state.db-wal" for p in state_files), state_files  # still open
        assert SECRET.encode() in b"".join(p.read_bytes() for p in state_files)
        private = [*state_files, daemon.var_dir / "logs" / "daemon.log"]
        assert not loose_modes_under(daemon.var_dir)
        assert readable_by_nobody(daemon.config_path)  # the harness can read what is open
        assert [p for p in private if readable_by_nobody(p)] == []
    finally:
        assert daemon.stop() == 0
    assert not loose_modes_under(daemon.var_dir)


@needs_root
def test_loose_modes_found_at_start_are_tightened_and_logged(open_workdir):
    var = open_workdir / "var"
    (var / "logs").mkdir(parents=True, mode=0o755)
    (var / "plugins" / "state").mkdir(parents=True, mode=0o755)
    old_log = var / "logs" / "old.log"
    old_log.write_text("an earlier run's line\n")
    old_log.chmod(0o644)
    script = var / "plugins" / "state" / "tool.sh"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    elsewhere = open_workdir / "shared.txt"
    elsewhere.write_text("not the daemon's\n")
    elsewhere.chmod(0o644)
    (var / "link").symlink_to(elsewhere)
    daemon = DaemonProcess(open_workdir).start()
    try:
        assert not loose_modes_under(var)
        assert stat.S_IMODE(var.stat().st_mode) == 0o700
        assert stat.S_IMODE(old_log.stat().st_mode) == 0o600
        assert stat.S_IMODE(script.stat().st_mode) == 0o700  # the owner keeps its x bit
        assert stat.S_IMODE(elsewhere.stat().st_mode) == 0o644  # a link's target is left alone
        assert not readable_by_nobody(old_log)
    finally:
        assert daemon.stop() == 0
    records = [r for r in log_records(daemon) if r["event"] == "file_modes_tightened"]
    assert len(records) == 1
    logged = " ".join(records[0]["paths"])
    assert f"{old_log} 0644 -> 0600" in logged and f"{var / 'logs'} 0755 -> 0700" in logged


def test_a_second_start_finds_nothing_to_tighten(daemon_factory):
    first = daemon_factory(subdir="again")
    first.stop()
    second = DaemonProcess(first.workdir).start()
    assert second.stop() == 0
    assert not [r for r in log_records(second) if r["event"].startswith("file_modes")]
