"""Finding the daemon's process without asking it: its lock, its pid file, whether it is gone."""
from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

POLL_INTERVAL_S = 0.05


def lock_holder(socket_path: str) -> int | None:
    """The pid holding the daemon's single-instance lock (0 if unreadable), or None if free.

    Probing takes a shared lock for a few microseconds: a daemon starting in exactly that
    window would refuse as "already running". Only the socket's owner can probe, so no other
    user can keep a daemon from starting this way.
    """
    path = socket_path + ".lock"
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.read(fd, 32).decode(errors="replace").strip()
            return int(text) if text.isdigit() else 0
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def process_is_gone(pid: int) -> bool:
    """True once pid has exited; a zombie counts as gone (its parent may never reap it)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    state = stat.rsplit(")", 1)[-1].split()[0]
    return state in ("Z", "X")


def wait_until_gone(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while not process_is_gone(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL_INTERVAL_S)
    return True


def pid_file(config: dict) -> Path:
    return Path(config["daemon"]["var_dir"]) / "run" / "daemon.pid"


def read_pid_file(config: dict) -> int | None:
    try:
        text = pid_file(config).read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None
