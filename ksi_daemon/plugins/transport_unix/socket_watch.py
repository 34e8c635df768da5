"""Keeping every socket reachable: once a second, is each path still the socket we bound?

Another program may delete `var/run/daemon.sock` or put something else there (an upstream KSI
client that decided the daemon was dead did exactly that). The listening socket then still
exists, but nobody can reach it by its path. The daemon holds the single-instance lock, so the
path is its own: whatever occupies it is removed, the socket is bound again, and the log has a
`socket_rebound` warning saying what had happened to it. Connections already open are
unaffected (they do not go through the path).
"""
from __future__ import annotations

import asyncio
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Awaitable, Callable

# The promise: noticed within a second (the default of transports.unix.check_interval_s).
CHECK_INTERVAL_S = 1.0


@dataclass
class BoundSocket:
    """A listener's path, the server accepting on it, and the file the bind created."""
    path: Path
    server: asyncio.AbstractServer
    identity: tuple[int, int]  # (st_dev, st_ino) of the socket file right after bind


def identity_of(path: Path) -> tuple[int, int]:
    status = os.lstat(path)
    return status.st_dev, status.st_ino


def what_is_there(path: Path, identity: tuple[int, int]) -> str | None:
    """None while `path` is the socket we bound; else what took its place, for the log."""
    try:
        status = os.lstat(path)
    except FileNotFoundError:
        return "nothing (deleted)"
    except OSError as exc:
        return f"unreadable ({exc.strerror})"
    if (status.st_dev, status.st_ino) == identity:
        return None
    if stat.S_ISSOCK(status.st_mode):
        return "another socket"
    if stat.S_ISDIR(status.st_mode):
        return "a directory"
    if stat.S_ISLNK(status.st_mode):
        return "a symbolic link"
    return "a regular file" if stat.S_ISREG(status.st_mode) else "another kind of file"


def clear_the_way(path: Path) -> None:
    """Remove what occupies our socket's path (never a directory: that is somebody's data)."""
    try:
        if stat.S_ISDIR(os.lstat(path).st_mode):
            raise OSError(f"{path} is now a directory; not removing it")
        path.unlink()
    except FileNotFoundError:
        pass


def still_ours(bound: BoundSocket) -> bool:
    return what_is_there(bound.path, bound.identity) is None


async def keep_reachable(bound_sockets: list[BoundSocket],
                         rebind: Callable[[BoundSocket], Awaitable[BoundSocket]], log,
                         serving: Callable[[], bool], interval_s: float = CHECK_INTERVAL_S
                         ) -> None:
    """Check every socket each `interval_s`; bind again any whose path is no longer ours.

    Only while `serving()`: once shutdown has closed the listeners, nothing is bound again.

    A rebind that fails (a directory in the way, a full disk) is logged and tried again at the
    next check; the daemon keeps serving its open connections meanwhile.
    """
    failing: set[Path] = set()
    while serving():
        await asyncio.sleep(interval_s)
        for index, bound in enumerate(bound_sockets):
            found = what_is_there(bound.path, bound.identity)
            if found is None or not serving():
                continue
            try:
                bound_sockets[index] = await rebind(bound)
            except (OSError, RuntimeError) as exc:
                if bound.path not in failing:  # once per outage, not once a second
                    log.error("socket_rebind_failed", socket=str(bound.path), found=found,
                              error=str(exc), retry_every_s=interval_s)
                failing.add(bound.path)
                continue
            failing.discard(bound.path)
            log.warning("socket_rebound", socket=str(bound.path), found=found,
                        reason="the socket file was deleted or replaced by another program; "
                               "bound again so clients can reach the daemon")
