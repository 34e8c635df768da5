"""`install-service`: a systemd user unit that runs this daemon, `ksi.service`.

Written to `$XDG_CONFIG_HOME/systemd/user/ksi.service` (`~/.config/...` by default), owner-only,
for this checkout, this interpreter and this configuration: `python -m ksi_daemon --foreground`
with the var directory, socket and config file resolved as the other verbs resolve them.
Checked with `systemd-analyze verify` when that command exists. `--dry-run` only prints it.
Enabling it is left to the user (`systemctl --user enable --now ksi`): this command changes
nothing that runs.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

from ..private_files import write_owner_only
from .output import EXIT_FAILED, EXIT_OK, error

PROJECT_ROOT = Path(__file__).resolve().parents[2]
UNIT_NAME = "ksi.service"
STOP_MARGIN_S = 15  # beyond the shutdown deadline: plugins checkpoint and close after it
VERIFY_TIMEOUT_S = 60
NO_USER_MANAGER = "Failed to initialize manager"


def install_service(config: dict, args: argparse.Namespace) -> int:
    unit = unit_text(config, args.config)
    if args.dry_run:
        print(unit, end="")
        return EXIT_OK
    path = unit_directory() / UNIT_NAME
    if path.exists() and path.read_text() != unit and not args.force:
        error(f"{path} exists with other content; not replacing it (--force replaces it, "
              "--dry-run shows what would be written)")
        return EXIT_FAILED
    try:
        write_owner_only(path, unit.encode())
    except OSError as exc:
        error(f"cannot write {path}: {exc}")
        return EXIT_FAILED
    print(f"Wrote {path}")
    verdict = verify(path)
    if verdict is not None:
        error(f"systemd-analyze verify finds the unit wrong:\n{verdict}")
        return EXIT_FAILED
    print("Start it now and at every login with:\n"
          "  systemctl --user daemon-reload && systemctl --user enable --now ksi\n"
          "(`loginctl enable-linger` keeps it running while you are logged out)")
    return EXIT_OK


def unit_directory() -> Path:
    config_home = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config_home) / "systemd" / "user"


def unit_text(config: dict, config_file: str | None) -> str:
    settings = config["daemon"]
    command = [sys.executable, "-m", "ksi_daemon", "--foreground",
               "--var-dir", str(Path(settings["var_dir"]).resolve()),
               "--socket", str(Path(settings["socket_path"]).absolute())]
    if config_file:
        command += ["--config", str(Path(config_file).expanduser().resolve())]
    stop_after = int(settings["shutdown_timeout"]) + STOP_MARGIN_S
    return f"""[Unit]
Description=KSI daemon ({PROJECT_ROOT})
Documentation=file://{PROJECT_ROOT}/docs/OPERATIONS.md

[Service]
Type=simple
WorkingDirectory={quoted(str(PROJECT_ROOT))}
Environment={quoted("PYTHONPATH=" + str(PROJECT_ROOT))}
ExecStart={" ".join(quoted(part) for part in command)}
# SIGTERM is the daemon's own clean shutdown: in-flight work drains, databases checkpoint.
KillSignal=SIGTERM
TimeoutStopSec={stop_after}
Restart=on-failure
RestartSec=2
UMask=0077

[Install]
WantedBy=default.target
"""


def quoted(word: str) -> str:
    """A word as systemd reads it: double-quoted when it has spaces or quotes, `%` doubled
    (systemd would read `%h` as a specifier)."""
    word = word.replace("%", "%%")
    if any(c.isspace() or c in "\"'\\;" for c in word):
        return '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return word


def verify(path: Path) -> str | None:
    """systemd-analyze's complaint about the unit, or None (also when it cannot be asked).

    As a user unit first; where no user manager can be set up (root in a container, no login
    session) that fails before reading the unit, and the system manager's check, which reads
    the same file the same way, is the one that can answer.
    """
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        print("systemd-analyze is not installed here: the unit was not verified")
        return None
    for mode in (["--user"], []):
        try:
            result = subprocess.run([analyze, *mode, "verify", str(path)], capture_output=True,
                                    text=True, timeout=VERIFY_TIMEOUT_S)
        except (OSError, subprocess.TimeoutExpired) as exc:
            print(f"systemd-analyze could not be run ({exc}): the unit was not verified")
            return None
        output = (result.stdout + result.stderr).strip()
        if mode and NO_USER_MANAGER in output:
            continue
        if result.returncode != 0:
            return output or f"exit code {result.returncode}"
        if output:
            print(f"systemd-analyze verify warns:\n{output}")
        print(f"systemd-analyze {' '.join(mode + ['verify'])}: no errors")
        return None
    return None
