"""`logs`: the last lines of var/logs/daemon.log, readable or raw, optionally followed."""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import orjson

from .audit import audit_log
from .output import EXIT_FAILED, EXIT_OK, error


def logs(config: dict, args: argparse.Namespace) -> int:
    if args.audit:
        return audit_log(config, args)
    log_file = Path(config["daemon"]["var_dir"]) / "logs" / "daemon.log"
    show = (lambda line: line) if args.raw else render_log_line
    try:
        file = open(log_file, "rb")
    except FileNotFoundError:
        error(f"no log file at {log_file} (has the daemon been started with this var directory?)")
        return EXIT_FAILED
    try:
        # One open file for both parts, so no line written in between is missed.
        for line in last_lines(file, args.lines):
            print(show(line))
        sys.stdout.flush()
        if args.follow:
            follow(log_file, file, show)
    except KeyboardInterrupt:
        pass
    finally:
        file.close()
    return EXIT_OK


def last_lines(file, count: int, block: int = 65536) -> list[str]:
    """The last `count` lines, read backwards so a large log costs only what is shown.

    Leaves the file positioned at the end it saw, where following continues.
    """
    end = file.seek(0, os.SEEK_END)
    position, data = end, b""
    while count > 0 and position > 0 and data.count(b"\n") <= count:
        step = min(block, position)
        position -= step
        file.seek(position)
        data = file.read(step) + data
    file.seek(end)
    lines = data.decode(errors="replace").splitlines()
    return lines[-count:] if count > 0 else []


def follow(path: Path, file, show) -> None:
    """Print lines as they are appended; start over when the file is replaced or truncated."""
    partial = b""
    while True:
        chunk = file.readline()
        if chunk:
            partial += chunk
            if partial.endswith(b"\n"):
                print(show(partial.decode(errors="replace").rstrip("\n")), flush=True)
                partial = b""
            continue
        if was_replaced(path, file):
            file.close()
            file = open(path, "rb")
            partial = b""
            continue
        time.sleep(0.2)


def was_replaced(path: Path, file) -> bool:
    try:
        current = path.stat()
    except FileNotFoundError:
        return False  # being rotated: keep reading the old file until the new one appears
    opened = os.fstat(file.fileno())
    return current.st_ino != opened.st_ino or current.st_size < file.tell()


def render_log_line(line: str) -> str:
    """A JSON log line as `time level event key=value ...`; other lines unchanged."""
    try:
        entry = orjson.loads(line)
    except orjson.JSONDecodeError:
        return line
    if not isinstance(entry, dict):
        return line
    timestamp = str(entry.pop("timestamp", ""))
    level = str(entry.pop("level", "")).upper()
    event = str(entry.pop("event", ""))
    trace = entry.pop("exception", None)
    fields = " ".join(f"{key}={format_value(value)}" for key, value in entry.items())
    text = " ".join(part for part in (timestamp, f"{level:<7}", event, fields) if part)
    return f"{text}\n{trace}" if trace else text


def format_value(value) -> str:
    if isinstance(value, str) and value and not any(c.isspace() or c in "\"=" for c in value):
        return value
    return orjson.dumps(value, default=str).decode()
