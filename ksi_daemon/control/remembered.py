"""What `start` was told, kept beside the pid file so `restart` can start the same daemon again.

Only the config file needs remembering: the var directory is where this file is found, and a
socket moved by --socket or KSI_SOCKET_PATH must be named again to find the daemon at all.
"""
from __future__ import annotations

import os
from pathlib import Path

import orjson

FILE_NAME = "started_with.json"


def remembered_path(config: dict) -> Path:
    return Path(config["daemon"]["var_dir"]) / "run" / FILE_NAME


def remember_start(config: dict, config_file: str | None) -> None:
    """Record the config file of the daemon just started (None: it read the default one)."""
    path = remembered_path(config)
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "wb") as file:
            file.write(orjson.dumps({"config": config_file}))
    except OSError:
        pass  # restart then uses the default configuration, as it did before this existed


def config_started_with(config: dict) -> str | None:
    """The config file the running daemon was started with, if it was started with one."""
    try:
        recorded = orjson.loads(remembered_path(config).read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None
    config_file = recorded.get("config") if isinstance(recorded, dict) else None
    return config_file if isinstance(config_file, str) else None
