"""Everything the daemon keeps under var/ is readable by its owner only.

State values, conversations and logs are private data: another local user must not be able to
read `state.db` with sqlite3 or follow the log. Two measures make that hold whatever umask the
daemon was started with:

- the process's umask is 0o077 from the start, so whatever it (or SQLite, or a plugin) creates
  later is born owner-only: directories 0700, files 0600;
- at start, what an earlier run or another tool left under var/ with group or other bits is
  tightened (the owner's bits are kept), and the daemon logs what it changed.
"""
from __future__ import annotations

import contextlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

PRIVATE_UMASK = 0o077
SHARED_BITS = 0o077  # group and other: read, write, execute


@dataclass(frozen=True)
class Tightened:
    path: str
    old_mode: int
    new_mode: int


def keep_private_from_now_on() -> None:
    """Files and directories this process creates from now on are owner-only."""
    os.umask(PRIVATE_UMASK)


@contextlib.contextmanager
def owner_only() -> Iterator[None]:
    """For a process that must not keep the strict umask (the launcher): only inside."""
    previous = os.umask(PRIVATE_UMASK)
    try:
        yield
    finally:
        os.umask(previous)


def make_private(var_dir: Path) -> tuple[list[Tightened], list[str]]:
    """Create `var_dir` owner-only if missing, then take group and other bits off everything
    in it. Returns (what was tightened, what could not be: path and reason). Symbolic links are
    neither followed nor changed: their target is not the daemon's to change."""
    with owner_only():
        var_dir.mkdir(parents=True, exist_ok=True)
    tightened: list[Tightened] = []
    failures: list[str] = []
    for path in [var_dir, *_everything_under(var_dir, failures)]:
        try:
            status = os.lstat(path)
            mode = stat.S_IMODE(status.st_mode)
            if stat.S_ISLNK(status.st_mode) or not mode & SHARED_BITS:
                continue
            os.chmod(path, mode & ~SHARED_BITS, follow_symlinks=False)
            tightened.append(Tightened(str(path), mode, mode & ~SHARED_BITS))
        except FileNotFoundError:
            continue  # removed meanwhile (a checkpoint, a stale socket): nothing to protect
        except OSError as exc:
            failures.append(f"{path}: {exc.strerror}")
    return tightened, failures


def _everything_under(root: Path, failures: list[str]) -> Iterator[Path]:
    def note(exc: OSError) -> None:
        failures.append(f"{exc.filename}: {exc.strerror}")
    for directory, dirnames, filenames in os.walk(root, onerror=note):
        for name in dirnames + filenames:
            yield Path(directory) / name


def describe(tightened: list[Tightened], limit: int = 20) -> list[str]:
    """'path 0644 -> 0600' lines for the log, at most `limit` of them."""
    return [f"{t.path} {t.old_mode:04o} -> {t.new_mode:04o}" for t in tightened[:limit]]


def report(log, tightened: list[Tightened], failures: list[str]) -> None:
    if tightened:
        log.warning("file_modes_tightened", count=len(tightened), paths=describe(tightened),
                    reason="var/ holds private data: owner-only (dirs 0700, files 0600)")
    if failures:
        log.warning("file_modes_not_tightened", count=len(failures), paths=failures[:20])


def write_owner_only(path: Path, data: bytes) -> None:
    """Write `path` whole, mode 0600 whatever the umask, replacing it at once: a reader sees the
    old content or the new, and no other user can open it at any moment (a token, a secret)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(descriptor, "wb") as file:
        os.fchmod(descriptor, 0o600)  # O_CREAT's mode only applies to a new file
        file.write(data)
    os.replace(temporary, path)
