#!/usr/bin/env python3
"""Control the KSI daemon: start | stop | restart | status | health | logs | migrate-state |
backup | restore | install-service | new-plugin.

This file is only a bootstrap and uses nothing but the standard library: it makes sure the
daemon's dependencies can be imported (creating `.venv` next to this file on first use and
re-running itself with that interpreter), then hands over to `ksi_daemon.control`.
Run `./daemon_control.py --help` for the verbs.
"""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from typing import NoReturn

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
VENV_PYTHON = VENV / "bin" / "python"
REQUIRED_MODULES = ("orjson", "pluggy", "pydantic", "uvloop", "structlog")
MINIMUM_PYTHON = (3, 11)  # pyproject.toml requires-python
# Set when re-executing: if .venv/bin/python then still does not run inside .venv, stop there.
REEXEC_MARKER = "KSI_CONTROL_REEXECUTED"


def missing_modules() -> list[str]:
    return [name for name in REQUIRED_MODULES if importlib.util.find_spec(name) is None]


def running_in_project_venv() -> bool:
    try:
        return Path(sys.prefix).resolve() == VENV.resolve()
    except OSError:
        return False


def say(message: str) -> None:
    # Progress goes to stderr so a script reading `status --json` from stdout is not disturbed.
    print(f"ksi: {message}", file=sys.stderr, flush=True)


def fail(message: str) -> NoReturn:
    print(f"ksi: {message}", file=sys.stderr, flush=True)
    sys.exit(1)


def run_step(description: str, command: list[str], hint: str = "") -> None:
    say(f"{description}: {' '.join(command)}")
    try:
        result = subprocess.run(command, cwd=ROOT)
    except OSError as exc:
        fail(f"{description} failed: {exc}")
    if result.returncode != 0:
        fail(f"{description} failed (exit code {result.returncode}); see the output above. "
             f"{hint}Fix the problem, or delete {VENV} and try again.")


def install_project_into_venv() -> None:
    if not VENV_PYTHON.exists():
        if sys.version_info < MINIMUM_PYTHON:
            fail(f"KSI needs Python {'.'.join(map(str, MINIMUM_PYTHON))} or newer and this is "
                 f"{sys.version.split()[0]}; run this command with a newer python3")
        say(f"first run: creating the virtual environment {VENV}")
        run_step("creating .venv", [sys.executable, "-m", "venv", str(VENV)],
                 hint="On Debian or Ubuntu, install the python3-venv package first. ")
    say("installing KSI and its dependencies into .venv (this takes a minute the first time)")
    run_step("installing dependencies", [str(VENV_PYTHON), "-m", "pip", "install",
                                         "-e", str(ROOT)])
    say("environment ready")


def reexec_with_venv_python() -> NoReturn:
    if os.environ.get(REEXEC_MARKER):
        fail(f"{VENV_PYTHON} does not run inside {VENV} (is .venv broken?); delete {VENV} "
             "and run this command again")
    os.environ[REEXEC_MARKER] = "1"
    os.execv(str(VENV_PYTHON), [str(VENV_PYTHON), str(Path(__file__).resolve()), *sys.argv[1:]])


def ensure_environment() -> None:
    """Return once this interpreter can run the daemon; otherwise switch to (or build) .venv."""
    if running_in_project_venv():
        if missing_modules():
            install_project_into_venv()
            importlib.invalidate_caches()
            if missing_modules():
                fail(f"{VENV} still cannot import {', '.join(missing_modules())} after "
                     "installing; delete it and run this command again")
        return
    if VENV_PYTHON.exists():
        reexec_with_venv_python()  # the project's own environment holds the pinned versions
    if not missing_modules():
        # This interpreter already has everything (for example a system-wide install); make
        # sure it and the daemon it starts find the package next to this file.
        os.environ["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
        return
    say(f"missing Python packages: {', '.join(missing_modules())}")
    install_project_into_venv()
    reexec_with_venv_python()


def main() -> int:
    ensure_environment()
    os.environ.pop(REEXEC_MARKER, None)  # not inherited by the daemon or anything it starts
    # sys.path[0] is this file's directory, so this checkout's package is the one imported.
    from ksi_daemon.control import main as control_main
    return control_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
