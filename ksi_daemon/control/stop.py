"""`stop` and `restart`: ask the daemon to shut down, then SIGTERM, then SIGKILL."""
from __future__ import annotations

import argparse
import os
import signal
from pathlib import Path

from ..config import ConfigError, load_config
from .asking import DaemonRefused, DaemonUnreachable, health_or_none, query
from .output import EXIT_FAILED, EXIT_OK, error
from .process import lock_holder, pid_file, wait_until_gone
from .remembered import config_started_with
from .start import start



def stop(config: dict, args: argparse.Namespace) -> int:
    socket_path = config["daemon"]["socket_path"]
    health = health_or_none(socket_path)
    pid = health.get("pid") if health else lock_holder(socket_path)
    if pid is None:
        print(f"KSI is not running (nothing on {socket_path}); nothing to stop.")
        return EXIT_OK
    if not pid:
        error(f"a process holds {socket_path}.lock but its pid is unknown; cannot stop it")
        return EXIT_FAILED
    grace = config["daemon"]["stop_grace_s"]
    if health is not None:
        timeout = args.timeout if args.timeout is not None else \
            config["daemon"]["shutdown_timeout"]
        # Past the deadline the daemon was given, plugins still checkpoint and close.
        if ask_to_shut_down(socket_path, pid, args.timeout, timeout + grace):
            return EXIT_OK
    else:
        print(f"KSI (pid {pid}) holds the lock on {socket_path} but does not answer.")
    if signal_and_wait(pid, signal.SIGTERM, grace):
        print(f"KSI stopped (pid {pid}) after SIGTERM.")
        return EXIT_OK
    if signal_and_wait(pid, signal.SIGKILL, grace):
        remove_leftovers(config)
        print(f"KSI killed (pid {pid}) with SIGKILL; it did not shut down cleanly, so in-flight "
              "work was lost (see `daemon_control.py logs`).")
        return EXIT_OK
    error(f"KSI (pid {pid}) is still running after SIGKILL; it could not be stopped")
    return EXIT_FAILED


def ask_to_shut_down(socket_path: str, pid: int, timeout: float | None, wait_s: float) -> bool:
    data = {"timeout_s": timeout} if timeout is not None else {}
    try:
        query(socket_path, "system:shutdown", data)
        print(f"Asked KSI (pid {pid}) to shut down; waiting up to {wait_s:g} s ...", flush=True)
    except (DaemonUnreachable, DaemonRefused) as exc:
        # It may have started shutting down on its own meanwhile: waiting still tells us.
        print(f"system:shutdown was not acknowledged ({exc}); waiting up to {wait_s:g} s ...",
              flush=True)
    if wait_until_gone(pid, wait_s):
        print(f"KSI stopped (pid {pid}).")
        return True
    print(f"KSI (pid {pid}) did not exit within {wait_s:g} s.", flush=True)
    return False


def signal_and_wait(pid: int, signum: int, wait_s: float) -> bool:
    name = signal.Signals(signum).name
    print(f"Sending {name} to pid {pid} and waiting up to {wait_s:g} s ...", flush=True)
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        return True
    except PermissionError:
        error(f"not allowed to send {name} to pid {pid} (another user's process?)")
        return False
    return wait_until_gone(pid, wait_s)


def remove_leftovers(config: dict) -> None:
    """A killed daemon leaves its socket and pid file; remove them once its lock is free."""
    socket_path = config["daemon"]["socket_path"]
    if lock_holder(socket_path) is not None:
        return
    for path in (Path(socket_path), pid_file(config)):
        if path.exists():
            path.unlink(missing_ok=True)
            print(f"Removed the stale {path}.")


def restart(config: dict, args: argparse.Namespace) -> int:
    new_config = config_for_the_restart(config, args)
    if new_config is None:
        return EXIT_FAILED
    code = stop(config, args)
    if code != EXIT_OK:
        error("not starting again because the running daemon could not be stopped")
        return code
    return start(new_config, args)


def config_for_the_restart(config: dict, args: argparse.Namespace) -> dict | None:
    """The configuration to start again with: `--config` if given, else the daemon's own.

    Read before stopping, so a config file that has gone or broken since leaves the running
    daemon alone (None, after saying why).
    """
    if args.config is not None:
        return config
    remembered = config_started_with(config)
    if remembered is None:
        return config
    args.config = remembered
    try:
        new_config, _warnings = load_config(remembered, {"var_dir": args.var_dir,
                                                         "socket_path": args.socket})
    except ConfigError as exc:
        error(f"the daemon was started with --config {remembered}, which cannot be used now: "
              f"{exc}; not restarting (give --config to choose another)")
        return None
    print(f"Restarting with the config file it was started with: {remembered}", flush=True)
    return new_config
