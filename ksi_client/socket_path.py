"""Where the daemon's socket is, found the way the daemon decides where to put it.

Order: `KSI_SOCKET_PATH`, then `$KSI_VAR_DIR/run/daemon.sock`, then the project's
`var/run/daemon.sock`: `var/` of the source tree this package was imported from (`~/.ksi/var`
for an installed copy), the daemon's own default, so the working directory does not matter.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

START_COMMAND = "./daemon_control.py start"


def find_socket_path(environ: Mapping[str, str] | None = None) -> Path:
    environ = os.environ if environ is None else environ
    explicit = environ.get("KSI_SOCKET_PATH")
    if explicit:
        return Path(explicit).expanduser().absolute()
    var_dir = environ.get("KSI_VAR_DIR")
    if var_dir:
        return (Path(var_dir).expanduser() / "run" / "daemon.sock").absolute()
    return project_var_dir() / "run" / "daemon.sock"


def project_var_dir() -> Path:
    # The rule of ksi_daemon.config.default_var_dir, restated so the client needs no daemon code.
    tree = Path(__file__).resolve().parent.parent
    if (tree / "pyproject.toml").is_file():
        return tree / "var"
    return Path("~/.ksi/var").expanduser().absolute()


def resolve_socket_path(socket_path: str | os.PathLike | None) -> Path:
    """The path given, or the discovered one when none was given."""
    if socket_path is None:
        return find_socket_path()
    return Path(socket_path).expanduser().absolute()


def no_daemon_message(path: Path, reason: str = "") -> str:
    """What to tell someone whose client found nobody at `path`, and what to do about it."""
    because = f" ({reason})" if reason else ""
    return (f"no KSI daemon is listening at {path}{because}; start one with "
            f"`{START_COMMAND}`, or point KSI_SOCKET_PATH (or KSI_VAR_DIR) at a running "
            "daemon's socket")
