"""Run a doc's marked shell commands as a user would type them, in a directory of their own.

A doc marks a ```bash block with `<!-- commands: NAME -->` right before it. `run_doc_commands`
runs the block with `bash -e` in `workdir`, which looks like a checkout (links to the project's
`daemon_control.py`, `ksi_daemon/` and `examples/`) with its own var/ (KSI_VAR_DIR) and HOME,
and `python` on PATH being this interpreter.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from conftest import ROOT, TEST_ENV, home_with_test_config

COMMANDS = re.compile(r"<!-- commands: (?P<name>\S+) -->\n```bash\n(?P<code>.*?)```", re.S)
LINKED = ("daemon_control.py", "ksi_daemon", "examples")


def doc_commands(doc: str, name: str) -> str:
    text = (ROOT / "docs" / doc).read_text(encoding="utf-8")
    found = {m["name"]: m["code"] for m in COMMANDS.finditer(text)}
    assert name in found, f"docs/{doc} has no commands {name!r}"
    return found[name]


def run_doc_commands(doc: str, name: str, workdir: Path,
                     timeout: float = 240) -> subprocess.CompletedProcess:
    for entry in LINKED:
        if not (workdir / entry).exists():
            (workdir / entry).symlink_to(ROOT / entry)
    shims = workdir / ".bin"
    shims.mkdir(exist_ok=True)
    shim = shims / "python"
    # a script, not a link: a virtual environment's python finds its environment by its path
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    shim.chmod(0o755)
    env = {**os.environ, **TEST_ENV, "HOME": str(home_with_test_config(workdir)),
           "KSI_VAR_DIR": str(workdir / "var"), "PATH": f"{shims}:{os.environ['PATH']}",
           "PYTHONPATH": str(ROOT)}
    for variable in ("KSI_SOCKET_PATH", "KSI_CONFIG", "VIRTUAL_ENV", "XDG_CONFIG_HOME"):
        env.pop(variable, None)
    return subprocess.run(["bash", "-e", "-o", "pipefail", "-c", doc_commands(doc, name)],
                          cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout)


def stop_daemon_in(workdir: Path) -> None:
    """Ask a daemon the commands left running in `workdir` (if any) to shut down."""
    from conftest import LineClient
    try:
        with LineClient(workdir / "var" / "run" / "daemon.sock", timeout=5) as client:
            client.request("system:shutdown")
    except OSError:
        pass
