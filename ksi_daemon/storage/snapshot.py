"""Consistent copies of SQLite databases that are in use: found by their header, copied with
SQLite's online backup API.

A plain `cp` of a database in WAL mode misses what is still in the `-wal` file, or copies a
page half-written; `Connection.backup` reads through SQLite, under one read transaction, so the
copy is the database as of one commit while the writer goes on.
"""
from __future__ import annotations

import hashlib
import os
import sqlite3
from pathlib import Path
from typing import Iterator

from .sqlite_database import integrity_of, open_reader

SQLITE_HEADER = b"SQLite format 3\x00"


def is_sqlite_file(path: Path) -> bool:
    try:
        with open(path, "rb") as file:
            return file.read(len(SQLITE_HEADER)) == SQLITE_HEADER
    except OSError:
        return False


def sqlite_files_under(root: Path, skip: tuple[Path, ...] = ()) -> Iterator[Path]:
    """Every SQLite database under `root` (not following links, not under `skip`), sorted."""
    skipped = {path.resolve() for path in skip}
    for directory, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(name for name in dirnames
                             if (Path(directory) / name).resolve() not in skipped)
        for name in sorted(filenames):
            path = Path(directory) / name
            if not path.is_symlink() and path.is_file() and is_sqlite_file(path):
                yield path


def copy_database(source: Path, target: Path) -> None:
    """Copy `source` to `target` (a new file) as of one commit, while others may write it.

    All pages in one step: a copy made in several steps starts over whenever another
    connection writes, which under steady writes might never finish. The copy is left in
    rollback-journal mode, one self-contained file (the daemon turns WAL on again when it
    opens it).
    """
    reader = open_reader(source)
    try:
        copy = sqlite3.connect(target)
        try:
            reader.backup(copy)
            copy.execute("PRAGMA journal_mode = DELETE")
        finally:
            copy.close()
    finally:
        reader.close()


def problems_of(path: Path) -> list[str]:
    """What PRAGMA integrity_check finds wrong with `path` (empty when it is sound)."""
    return [line for line in integrity_of(path) if line != "ok"]


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
