"""`daemon_control.py backup`, `restore` and `install-service`, as a user types them.

The backup is taken while a client floods the daemon with writes: the copy must open, pass its
integrity check, and hold a prefix of the writes with no gap (one connection's writes commit in
order, so a consistent copy as of one commit holds k-0 .. k-(n-1) for some n).
"""
from __future__ import annotations

import shutil
import sqlite3
import stat
import threading
from pathlib import Path

import orjson
import pytest

from conftest import LineClient, data_of
from test_daemon_control import control  # noqa: F401  (the fixture: daemon_control.py as typed)


def the_backup_directory(output: str) -> Path:
    [line] = [line for line in output.splitlines() if line.startswith("Backed up ")]
    return Path(line.rsplit(" to ", 1)[1])


def flood_keys(socket_path: Path, stop: threading.Event, committed: list[int]) -> None:
    with LineClient(socket_path) as client:
        number = 0
        while not stop.is_set():
            data_of(client.request("state:set", {"key": f"k-{number:06d}", "value": number,
                                                 "namespace": "flood"}))
            committed.append(number)  # the reply means the write is committed
            number += 1


def keys_in(database: Path) -> list[str]:
    db = sqlite3.connect(database)
    try:
        return [row[0] for row in db.execute(
            "SELECT key FROM state WHERE namespace = 'flood' ORDER BY key")]
    finally:
        db.close()


def modes_under(directory: Path) -> set[int]:
    return {stat.S_IMODE(path.lstat().st_mode) for path in [directory, *directory.rglob("*")]}


def test_a_backup_taken_during_a_write_flood_is_consistent(control, tmp_path):  # noqa: F811
    control.started()
    stop, committed = threading.Event(), []
    flooding = threading.Thread(target=flood_keys, args=(control.socket_path, stop, committed))
    flooding.start()
    try:
        while len(committed) < 200:  # well under way
            stop.wait(0.01)
        before = len(committed)
        result = control.run("backup", str(tmp_path / "backups"))
        after = len(committed)
    finally:
        stop.set()
        flooding.join()
    assert result.returncode == 0, result.stderr
    assert after > before  # the daemon went on writing during the backup
    target = the_backup_directory(result.stdout)
    assert target.parent == tmp_path / "backups" and target.name.startswith("ksi-")
    copy = target / "db" / "state.db"
    keys = keys_in(copy)
    assert before <= len(keys) <= after
    assert keys == [f"k-{n:06d}" for n in range(len(keys))]  # a prefix, no gap
    assert sqlite3.connect(copy).execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    manifest = orjson.loads((target / "manifest.json").read_bytes())
    listed = {entry["path"] for entry in manifest["files"]}
    # found by walking var/: the daemon's databases and every plugin's own
    assert {"db/state.db", "db/conversations.db", "plugins/agent/agents.db"} <= listed
    assert all(path.endswith(".db") for path in listed)  # no -wal/-shm: each copy is whole
    assert manifest["daemon_pid"] == control.request("system:health")["data"]["pid"]
    assert modes_under(target) <= {0o700, 0o600}


def test_restore_puts_the_backup_back_and_a_new_daemon_sees_it(control):  # noqa: F811
    control.started()
    data_of(control.request("state:set", {"key": "kept", "value": "from the backup"}))
    result = control.run("backup")
    assert result.returncode == 0, result.stderr
    target = the_backup_directory(result.stdout)
    assert target.parent == control.var_dir / "backups"  # the default place
    data_of(control.request("state:set", {"key": "later", "value": "after the backup"}))

    refused = control.run("restore", str(target))
    assert refused.returncode == 1
    assert "KSI is running" in refused.stderr and "daemon_control.py stop" in refused.stderr

    assert control.run("stop").returncode == 0
    restored = control.run("restore", str(target))
    assert restored.returncode == 0, restored.stderr
    assert "restored db/state.db" in restored.stdout
    control.started()
    assert data_of(control.request("state:get", {"key": "kept"}))["value"] == "from the backup"
    assert data_of(control.request("state:get", {"key": "later"}))["found"] is False
    # what the restore replaced was saved first, so it can be undone
    saved = [d for d in (control.var_dir / "backups").iterdir() if d != target]
    assert len(saved) == 1 and "later" in str(sqlite3.connect(
        saved[0] / "db" / "state.db").execute("SELECT group_concat(key) FROM state").fetchone())


def test_restore_refuses_a_damaged_or_foreign_directory(control, tmp_path):  # noqa: F811
    control.started()
    target = the_backup_directory(control.run("backup", str(tmp_path)).stdout)
    assert control.run("stop").returncode == 0
    not_a_backup = control.run("restore", str(tmp_path / "nothing-here"))
    assert not_a_backup.returncode == 1 and "no manifest.json" in not_a_backup.stderr
    with open(target / "db" / "state.db", "r+b") as file:
        file.seek(200)
        file.write(b"damage")
    damaged = control.run("restore", str(target))
    assert damaged.returncode == 1 and "does not match its SHA-256" in damaged.stderr
    manifest = orjson.loads((target / "manifest.json").read_bytes())
    manifest["files"] = [{"path": "../outside.db", "sha256": "x"}]
    (target / "manifest.json").write_bytes(orjson.dumps(manifest))
    escaping = control.run("restore", str(target))
    assert escaping.returncode == 1 and "outside the var directory" in escaping.stderr


# ---- install-service -----------------------------------------------------------------------------

def test_install_service_dry_run_prints_the_unit_and_writes_nothing(control):  # noqa: F811
    result = control.run("install-service", "--dry-run")
    assert result.returncode == 0, result.stderr
    assert "[Service]" in result.stdout and "-m ksi_daemon --foreground" in result.stdout
    assert f"--var-dir {control.var_dir}" in result.stdout
    assert not (control.workdir / ".config").exists()


def test_install_service_writes_an_owner_only_unit_that_systemd_accepts(control):  # noqa: F811
    result = control.run("install-service")
    assert result.returncode == 0, result.stdout + result.stderr
    unit = control.workdir / ".config" / "systemd" / "user" / "ksi.service"
    assert stat.S_IMODE(unit.stat().st_mode) == 0o600
    text = unit.read_text()
    exec_start = next(line for line in text.splitlines() if line.startswith("ExecStart="))
    command = exec_start.removeprefix("ExecStart=").split()
    assert Path(command[0]).is_absolute() and command[1:4] == ["-m", "ksi_daemon",
                                                               "--foreground"]
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed: the unit could not be verified")
    assert "systemd-analyze" in result.stdout and "no errors" in result.stdout


def test_a_unit_systemd_refuses_is_reported_not_written_off_as_verified(tmp_path):
    from ksi_daemon.control.install_service import verify
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed: nothing to ask")
    broken = tmp_path / "ksi.service"
    broken.write_text("[Service]\nExecStart=/nonexistent/python -m ksi_daemon\n")
    complaint = verify(broken)
    assert complaint is not None and "/nonexistent/python" in complaint


def test_install_service_keeps_a_unit_it_did_not_write(control):  # noqa: F811
    unit = control.workdir / ".config" / "systemd" / "user" / "ksi.service"
    unit.parent.mkdir(parents=True)
    unit.write_text("[Service]\nExecStart=/bin/true\n")
    result = control.run("install-service")
    assert result.returncode == 1 and "--force" in result.stderr
    assert unit.read_text() == "[Service]\nExecStart=/bin/true\n"


def test_the_backup_commands_of_operations_md_run(workdir):
    from doc_commands import run_doc_commands, stop_daemon_in
    try:
        result = run_doc_commands("OPERATIONS.md", "backup-restore", workdir)
        assert result.returncode == 0, result.stdout + result.stderr
        with LineClient(workdir / "var" / "run" / "daemon.sock") as client:
            assert data_of(client.request("state:get", {"key": "k"}))["value"] == "before"
    finally:
        stop_daemon_in(workdir)


def test_the_service_commands_of_operations_md_run(workdir):
    from doc_commands import run_doc_commands
    result = run_doc_commands("OPERATIONS.md", "install-service", workdir)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (workdir / ".config" / "systemd" / "user" / "ksi.service").is_file()


def test_a_backup_into_var_itself_does_not_copy_itself(control):  # noqa: F811
    control.started()
    result = control.run("backup", str(control.var_dir))
    assert result.returncode == 0, result.stderr
    manifest = orjson.loads((the_backup_directory(result.stdout) / "manifest.json").read_bytes())
    assert not [e["path"] for e in manifest["files"] if e["path"].startswith("ksi-")]
