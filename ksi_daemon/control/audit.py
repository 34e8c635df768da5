"""`logs --audit`: the state audit (changes and permission refusals), read from state.db.

Read straight from the database file, read-only, so it works whether or not the daemon runs
(a WAL reader neither waits for nor blocks the daemon's writer).
"""
from __future__ import annotations

import argparse
import sqlite3
import time
from pathlib import Path

import orjson

from .output import EXIT_FAILED, EXIT_OK, error

COLUMNS = ("id", "at", "namespace", "key", "op", "version", "peer_pid", "peer_uid",
           "correlation_id", "agent_id", "event", "detail")


def audit_log(config: dict, args: argparse.Namespace) -> int:
    path = state_database(config)
    try:
        db = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)
        rows = db.execute(f"SELECT {', '.join(COLUMNS)} FROM state_audit ORDER BY id DESC "
                          "LIMIT ?", (max(args.lines, 0),)).fetchall()
        db.close()
    except sqlite3.Error as exc:
        error(f"cannot read the audit in {path}: {exc} (has the daemon been started with this "
              "var directory, with plugins.state.audit on?)")
        return EXIT_FAILED
    for row in reversed(rows):
        entry = dict(zip(COLUMNS, row))
        print(orjson.dumps(entry).decode() if args.raw else render_entry(entry))
    return EXIT_OK


def state_database(config: dict) -> Path:
    own = (config.get("plugins") or {}).get("state") or {}
    if own.get("db_path"):
        return Path(own["db_path"]).expanduser()
    return Path(config["daemon"]["var_dir"]) / "db" / "state.db"


def render_entry(entry: dict) -> str:
    """`time op what who`, e.g. `2026-12-04T18:50:01Z set notes:k v3 uid=1000 pid=42`."""
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(entry["at"]))
    if entry["op"] == "refused":
        what = f"{entry['event']} ({entry['detail']})"
    else:
        key = f":{entry['key']}" if entry["key"] is not None else ":*"
        version = f" v{entry['version']}" if entry["version"] is not None else ""
        what = f"{entry['namespace']}{key}{version}"
    who = " ".join(f"{name}={entry[column]}" for name, column in (
        ("uid", "peer_uid"), ("pid", "peer_pid"), ("agent", "agent_id"),
        ("cid", "correlation_id")) if entry[column] is not None) or "daemon"
    return f"{when} {entry['op']:<7} {what} {who}"
