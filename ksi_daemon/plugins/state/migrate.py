"""Import an older KSI state store into the state database.

    daemon_control.py migrate-state --from PATH [--db FILE | --var-dir DIR]

PATH is either an older KSI SQLite database with the table
`agent_shared_state(key, value, namespace, ...)` (keys stored as "<namespace>:<key>", namespace
`global` stored bare; values JSON text or plain strings), or a directory of `<namespace>.json`
files each holding {key: value}.

A key already present with the same value is counted `unchanged`; one present with another value
is kept as it is and counted `kept` (the newer store wins), so running the import twice changes
nothing. Keys or namespaces the state plugin would refuse are counted `invalid` and skipped.
Safe while the daemon runs (SQLite locking), though its subscribers get no `state:changed`.
"""
from __future__ import annotations

import argparse
import sqlite3
import sys
import time
from pathlib import Path

import orjson

from ...config import ConfigError, load_config
from ...storage.sqlite_database import DatabaseUnusable, open_writer, read_only_uri
from .models import MAX_KEY_CHARS, MAX_NAMESPACE_CHARS, _CONTROL
from .store import create_schema, encode_value

OLD_TABLE = "agent_shared_state"
DB_FILE_NAME = "state.db"  # as the state plugin names it in <var dir>/db/


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="daemon_control.py migrate-state",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--from", dest="source", required=True,
                        help="an older state database file, or a directory of <namespace>.json")
    target = parser.add_mutually_exclusive_group()
    target.add_argument("--db", help="the state database to import into "
                        "(default: <var dir>/db/state.db)")
    target.add_argument("--var-dir", help="the daemon's var directory (default: the one the "
                        "daemon's configuration names: --config, $KSI_CONFIG, "
                        "~/.ksi/daemon.json, $KSI_VAR_DIR, else ./var)")
    parser.add_argument("--config", help="the daemon's config file, to find its var directory")
    parser.add_argument("--synchronous", choices=("FULL", "NORMAL"), default="FULL")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(sys.argv[1:] if argv is None else argv)
    except SystemExit as exc:  # argparse has printed the usage and the problem
        return exc.code if isinstance(exc.code, int) else 2
    source = Path(args.source).expanduser()
    try:
        target = target_database(args)
    except ConfigError as exc:
        print(f"migrate-state: {exc}", file=sys.stderr)
        return 1
    try:
        entries = list(read_source(source))
    except (OSError, sqlite3.Error, ValueError) as exc:
        print(f"migrate-state: cannot read {source}: {exc}", file=sys.stderr)
        return 1
    try:
        conn = open_writer(target, args.synchronous, create_schema)
    except DatabaseUnusable as exc:
        print(f"migrate-state: {exc}", file=sys.stderr)
        return 1
    try:
        counts = import_entries(conn, entries)
    except sqlite3.Error as exc:
        print(f"migrate-state: import into {target} failed, nothing was changed: {exc}",
              file=sys.stderr)
        return 1
    finally:
        conn.close()
    print(f"migrate-state: {source} -> {target}")
    for name in ("read", "imported", "unchanged", "kept", "invalid"):
        print(f"  {name}: {counts[name]}")
    return 0


def target_database(args: argparse.Namespace) -> Path:
    if args.db:
        return Path(args.db).expanduser()
    if args.var_dir:
        return Path(args.var_dir).expanduser() / "db" / DB_FILE_NAME
    config, _warnings = load_config(args.config)
    section = config.get("plugins", {}).get("state") or {}
    if section.get("db_path"):
        return Path(section["db_path"]).expanduser()
    return Path(config["daemon"]["var_dir"]) / "db" / DB_FILE_NAME


# ---- reading the old stores --------------------------------------------------------------------

def read_source(source: Path):
    """Yield (namespace, key, value) from an old database file or a directory of JSON files."""
    if source.is_dir():
        yield from read_json_directory(source)
    elif source.is_file():
        yield from read_old_database(source)
    else:
        raise ValueError("no such file or directory")


def read_old_database(path: Path):
    conn = sqlite3.connect(read_only_uri(path), uri=True)
    try:
        columns = {row[1] for row in conn.execute(f"PRAGMA table_info({OLD_TABLE})")}
        if not {"key", "value"} <= columns:
            raise ValueError(f"no table {OLD_TABLE}(key, value, ...) in this database")
        namespace_column = "namespace" if "namespace" in columns else "NULL"
        rows = conn.execute(f"SELECT key, value, {namespace_column} FROM {OLD_TABLE} "
                            "ORDER BY rowid").fetchall()
    finally:
        conn.close()
    for stored_key, stored_value, namespace in rows:
        namespace, key = split_old_key(str(stored_key), namespace)
        yield namespace, key, decode_old_value(stored_value)


def split_old_key(stored_key: str, namespace: str | None) -> tuple[str, str]:
    """Old keys are "<namespace>:<key>", except in `global`, where they are stored bare."""
    if namespace and namespace != "global":
        prefix = f"{namespace}:"
        return namespace, stored_key[len(prefix):] if stored_key.startswith(prefix) \
            else stored_key
    return "global", stored_key


def decode_old_value(stored):
    """JSON text becomes its value; anything that is not JSON was a plain string."""
    if isinstance(stored, bytes):
        stored = stored.decode("utf-8", errors="replace")
    if not isinstance(stored, str):
        return stored  # a number or NULL stored natively
    try:
        return orjson.loads(stored)
    except orjson.JSONDecodeError:
        return stored


def read_json_directory(directory: Path):
    for file in sorted(directory.glob("*.json")):
        content = orjson.loads(file.read_bytes())
        if not isinstance(content, dict):
            raise ValueError(f"{file} holds a JSON {type(content).__name__}, not an object")
        for key, value in content.items():
            yield file.stem, key, value


# ---- writing ------------------------------------------------------------------------------------

def import_entries(conn: sqlite3.Connection, entries) -> dict[str, int]:
    counts = dict.fromkeys(("read", "imported", "unchanged", "kept", "invalid"), 0)
    now = time.time()
    conn.execute("BEGIN IMMEDIATE")
    try:
        for namespace, key, value in entries:
            counts["read"] += 1
            if not (valid_name(namespace, MAX_NAMESPACE_CHARS) and valid_name(key, MAX_KEY_CHARS)):
                counts["invalid"] += 1
                continue
            value_json = encode_value(value)
            row = conn.execute("SELECT value FROM state WHERE namespace = ? AND key = ? AND "
                               "(expires_at IS NULL OR expires_at > ?)",
                               (namespace, key, now)).fetchone()
            if row is None:
                conn.execute("INSERT OR REPLACE INTO state (namespace, key, value, version, "
                             "updated_at, expires_at) VALUES (?, ?, ?, 1, ?, NULL)",
                             (namespace, key, value_json, now))
                counts["imported"] += 1
            elif same_json(row[0], value_json):
                counts["unchanged"] += 1
            else:
                counts["kept"] += 1
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return counts


def same_json(a: str, b: str) -> bool:
    """Equal as JSON documents (object key order aside; 1 and true stay different)."""
    return a == b or orjson.dumps(orjson.loads(a), option=orjson.OPT_SORT_KEYS) == \
        orjson.dumps(orjson.loads(b), option=orjson.OPT_SORT_KEYS)


def valid_name(text, max_chars: int) -> bool:
    return isinstance(text, str) and 0 < len(text) <= max_chars and not _CONTROL.search(text)


if __name__ == "__main__":
    sys.exit(main())
