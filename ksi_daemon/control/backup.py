"""`backup [DIR]`: a consistent copy of every database under var/, while the daemon runs.

The databases are found by walking var/ for SQLite files (so a plugin's own database is never
forgotten), each copied with SQLite's online backup API (storage/snapshot.py) into
`DIR/ksi-<timestamp>/` (DIR defaults to `var/backups/`, which the walk skips), beside a
`manifest.json` naming each file with its size, SHA-256 and integrity check. `restore` reads
that manifest. Everything is owner-only, as var/ is.
"""
from __future__ import annotations

import argparse
import os
import sqlite3
import time
from pathlib import Path

import orjson

from ..private_files import owner_only, write_owner_only
from ..storage.snapshot import copy_database, problems_of, sha256_of, sqlite_files_under
from .asking import health_or_none
from .output import EXIT_FAILED, EXIT_OK, error

MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1
BACKUPS_DIR_NAME = "backups"  # under var/: the default place, never itself backed up


def default_backups_dir(config: dict) -> Path:
    return Path(config["daemon"]["var_dir"]) / BACKUPS_DIR_NAME


def backup(config: dict, args: argparse.Namespace) -> int:
    var_dir = Path(config["daemon"]["var_dir"])
    if not var_dir.is_dir():
        error(f"no var directory at {var_dir}: nothing to back up")
        return EXIT_FAILED
    parent = Path(args.directory).expanduser() if args.directory else default_backups_dir(config)
    try:
        target, manifest = take_backup(config, parent)
    except (OSError, sqlite3.Error) as exc:
        error(f"backup failed: {exc}")
        return EXIT_FAILED
    if not manifest["files"]:
        error(f"no databases under {var_dir}; wrote an empty backup to {target}")
    for entry in manifest["files"]:
        print(f"  {entry['path']}  {entry['bytes']} bytes")
    running = f" while the daemon (pid {manifest['daemon_pid']}) ran" \
        if manifest["daemon_pid"] else ""
    print(f"Backed up {len(manifest['files'])} database(s){running} to {target}")
    print(f"Restore it with: daemon_control.py restore {target}")
    return EXIT_OK


def take_backup(config: dict, parent: Path) -> tuple[Path, dict]:
    """Copy every database under var/ into a new `parent/ksi-<timestamp>/`; its manifest."""
    var_dir = Path(config["daemon"]["var_dir"])
    health = health_or_none(config["daemon"]["socket_path"])
    with owner_only():
        parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        target = new_backup_directory(parent)
        files = []
        # (the backup being written is skipped too, wherever DIR is: even var/ itself)
        skip = (default_backups_dir(config), parent, target)
        for database in sqlite_files_under(var_dir, skip=skip):
            relative = database.relative_to(var_dir)
            copy = target / relative
            copy.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            copy_database(database, copy)
            problems = problems_of(copy)
            if problems:
                raise sqlite3.DatabaseError(f"the copy of {database} fails its integrity "
                                            f"check: {'; '.join(problems[:3])}")
            files.append({"path": str(relative), "bytes": copy.stat().st_size,
                          "sha256": sha256_of(copy)})
    manifest = {"format": MANIFEST_FORMAT, "created_at": time.time(),
                "var_dir": str(var_dir.resolve()),
                "daemon_pid": health.get("pid") if health else None, "files": files}
    write_owner_only(target / MANIFEST, orjson.dumps(manifest, option=orjson.OPT_INDENT_2))
    return target, manifest


def new_backup_directory(parent: Path) -> Path:
    """`ksi-YYYYmmdd-HHMMSS` (with a suffix when two backups share a second), created 0700."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for attempt in range(100):
        candidate = parent / (f"ksi-{stamp}" + (f"-{attempt}" if attempt else ""))
        try:
            candidate.mkdir(mode=0o700)
            os.chmod(candidate, 0o700)
            return candidate
        except FileExistsError:
            continue
    raise OSError(f"cannot find a free backup directory name in {parent}")
