"""`restore DIR`: put the databases of a `backup` back under var/, with the daemon stopped.

Refused while a daemon runs on this var directory (it would go on writing the files being
replaced). Every file is checked against the manifest's SHA-256 before anything changes; the
databases about to be replaced are first backed up themselves (var/backups/), so a restore can
be undone. A database's old `-wal`/`-shm` files go with it: left beside the restored file they
would replay the replaced database's last writes into it.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
from pathlib import Path, PurePosixPath

import orjson

from ..private_files import owner_only
from ..storage.snapshot import sha256_of, sqlite_files_under
from .asking import health_or_none
from .backup import MANIFEST, MANIFEST_FORMAT, default_backups_dir, take_backup
from .output import EXIT_FAILED, EXIT_OK, error
from .process import lock_holder

SIDE_FILES = ("-wal", "-shm", "-journal")


class BackupUnusable(Exception):
    """The directory is not a backup this command can restore; the message says why."""


def restore(config: dict, args: argparse.Namespace) -> int:
    var_dir = Path(config["daemon"]["var_dir"])
    socket_path = config["daemon"]["socket_path"]
    health = health_or_none(socket_path)
    pid = health.get("pid") if health else lock_holder(socket_path)
    if pid is not None:
        error(f"KSI is running (pid {pid or 'unknown'}) on {socket_path}; a restore would be "
              "overwritten by what it writes. Stop it first: daemon_control.py stop")
        return EXIT_FAILED
    source = Path(args.directory).expanduser()
    try:
        files = checked_files(source)
    except BackupUnusable as exc:
        error(f"cannot restore from {source}: {exc}")
        return EXIT_FAILED
    try:
        if any(sqlite_files_under(var_dir, skip=(default_backups_dir(config),))):
            saved, _manifest = take_backup(config, default_backups_dir(config))
            print(f"The databases being replaced are saved in {saved}")
        for relative in files:
            put_back(source / relative, var_dir / relative)
            print(f"  restored {relative}")
    except (OSError, sqlite3.Error) as exc:
        error(f"restore failed: {exc}")
        return EXIT_FAILED
    left = [str(p.relative_to(var_dir)) for p in
            sqlite_files_under(var_dir, skip=(default_backups_dir(config),))
            if str(p.relative_to(var_dir)) not in files]
    if left:
        print(f"Not in the backup, left as they are: {', '.join(left)}")
    print(f"Restored {len(files)} database(s) from {source} into {var_dir}; start the daemon "
          "with: daemon_control.py start")
    return EXIT_OK


def checked_files(source: Path) -> list[str]:
    """The manifest's relative paths, each present under `source` with the recorded hash."""
    try:
        manifest = orjson.loads((source / MANIFEST).read_bytes())
    except FileNotFoundError:
        raise BackupUnusable(f"no {MANIFEST} there (is it a directory `backup` made?)") from None
    except (OSError, orjson.JSONDecodeError) as exc:
        raise BackupUnusable(f"{MANIFEST} cannot be read: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise BackupUnusable(f"{MANIFEST} is not a format-{MANIFEST_FORMAT} backup manifest")
    files = []
    for entry in manifest.get("files") or []:
        relative = PurePosixPath(str(entry.get("path", "")))
        if relative.is_absolute() or ".." in relative.parts or not relative.parts:
            raise BackupUnusable(f"{MANIFEST} names {str(relative)!r}, outside the var directory")
        copy = source / relative
        if not copy.is_file():
            raise BackupUnusable(f"{relative} is listed in {MANIFEST} but missing")
        if sha256_of(copy) != entry.get("sha256"):
            raise BackupUnusable(f"{relative} does not match its SHA-256 in {MANIFEST} "
                                 "(changed or damaged since the backup)")
        files.append(str(relative))
    return files


def put_back(copy: Path, target: Path) -> None:
    """Replace `target` by `copy` at once (a partial file is never left at `target`)."""
    with owner_only():
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        temporary = target.with_name(f".{target.name}.restoring")
        shutil.copyfile(copy, temporary)
        os.chmod(temporary, 0o600)
        for suffix in SIDE_FILES:
            Path(f"{target}{suffix}").unlink(missing_ok=True)
        os.replace(temporary, target)
