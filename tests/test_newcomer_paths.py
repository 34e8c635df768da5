"""Every verb and every client finds the project's daemon wherever it is run from.

"The project's var/" is `var/` of the source tree the packages were imported from (an
installed copy, with no source tree, uses `~/.ksi/var`). These tests run a copy of the tree in
a private directory, so the daemon they start is that copy's and nobody else's.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import orjson
import pytest

from conftest import TEST_ENV, home_with_test_config

ROOT = Path(__file__).resolve().parent.parent
TREE_PARTS = ("ksi_daemon", "ksi_client", "interfaces", "daemon_control.py", "pyproject.toml")
WHERE_BOTH_LOOK = """
from ksi_client import find_socket_path
from ksi_daemon.config import load_config
config, _ = load_config(None, {}, environ={})
print(config["daemon"]["socket_path"])
print(find_socket_path({}))
"""


def copy_of_the_tree(destination: Path, parts=TREE_PARTS) -> Path:
    for part in parts:
        source = ROOT / part
        if source.is_dir():
            shutil.copytree(source, destination / part,
                            ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, destination / part)
    return destination


@pytest.fixture
def tree():
    # Short path under /tmp: a Unix socket path may not exceed 107 bytes.
    base = Path(tempfile.mkdtemp(prefix="ksn-", dir="/tmp"))
    copy = copy_of_the_tree(base / "ksi")
    home_with_test_config(base / "home")
    (base / "elsewhere").mkdir()
    yield copy
    for pid in processes_of(copy):  # wherever they put their var/, even when a test failed
        os.kill(pid, signal.SIGKILL)
    shutil.rmtree(base, ignore_errors=True)


def processes_of(tree: Path) -> list[int]:
    """Processes started from this copy: daemon_control.py hands them PYTHONPATH=<tree>."""
    marker = f"PYTHONPATH={tree}\0".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if marker in (entry / "environ").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                pass
    return pids


def environment(tree: Path) -> dict:
    env = {**os.environ, **TEST_ENV, "HOME": str(tree.parent / "home")}
    for name in ("KSI_VAR_DIR", "KSI_SOCKET_PATH", "KSI_CONFIG", "VIRTUAL_ENV", "PYTHONPATH"):
        env.pop(name, None)
    return env


def control(tree: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(tree / "daemon_control.py"), *args], cwd=cwd,
                          env=environment(tree), capture_output=True, text=True, timeout=90)


def test_every_verb_finds_the_one_daemon_from_any_directory(tree):
    elsewhere = tree.parent / "elsewhere"
    started = control(tree, elsewhere, "start")
    assert started.returncode == 0, started.stderr
    assert (tree / "var" / "run" / "daemon.sock").exists()
    assert not (elsewhere / "var").exists()  # not the working directory's var/
    status = control(tree, Path("/"), "status", "--json")
    assert status.returncode == 0, status.stdout + status.stderr
    pid = orjson.loads(status.stdout)["pid"]
    again = control(tree, Path("/tmp"), "start")
    assert again.returncode == 1 and f"already running (pid {pid})" in again.stderr
    health = control(tree, tree / "interfaces", "health", "--json")
    assert orjson.loads(health.stdout)["pid"] == pid
    chat = subprocess.run([sys.executable, str(tree / "interfaces" / "chat.py"), "hello"],
                          cwd=Path("/"), env=environment(tree), capture_output=True, text=True,
                          timeout=90)
    assert chat.returncode == 0, chat.stderr
    assert control(tree, Path("/"), "stop").returncode == 0
    assert not (tree / "var" / "run" / "daemon.sock").exists()


def where_both_look(tree: Path, cwd: Path) -> list[str]:
    result = subprocess.run([sys.executable, "-c", WHERE_BOTH_LOOK], cwd=cwd,
                            env={**environment(tree), "PYTHONPATH": str(tree)},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def test_the_daemon_and_the_client_agree_on_the_default_socket(tree):
    daemon_says, client_says = where_both_look(tree, Path("/"))
    assert daemon_says == client_says == str(tree / "var" / "run" / "daemon.sock")


def test_an_installed_copy_without_a_source_tree_keeps_its_var_beside_the_config(tmp_path):
    installed = copy_of_the_tree(tmp_path / "site", ("ksi_daemon", "ksi_client"))
    daemon_says, client_says = where_both_look(installed, tmp_path)
    home = installed.parent / "home"
    assert daemon_says == client_says == str(home / ".ksi" / "var" / "run" / "daemon.sock")
