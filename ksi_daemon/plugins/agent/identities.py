"""Agents' identities from the deployment guide's `identities_file` (`agent_service`).

The file is JSON: an object keyed by agent id (`{"analyst-1": {"display_name": ..., "role":
...}}`), the same under an `identities` key, or a list of records each naming its `agent_id`.
A record is free-form (upstream KSI's kept a display name, role, traits, appearance); `agent:info`
shows the one of its agent as `identity`. The file is read again when it changes; an unreadable
or malformed file is logged once per change and leaves every identity unknown.
"""
from __future__ import annotations

import os
from pathlib import Path

import orjson
import structlog

log = structlog.get_logger("ksi.plugin.agent")


class IdentityBook:
    def __init__(self, path: Path | None):
        self.path = path
        self._stamp: tuple | None = None
        self._identities: dict[str, dict] = {}

    def of(self, agent_id: str) -> dict | None:
        if self.path is None:
            return None
        self._refresh()
        return self._identities.get(agent_id)

    def _refresh(self) -> None:
        try:
            stat = os.stat(self.path)
        except OSError as exc:
            self._use(("unreadable", exc.errno), {}, f"cannot be read: {exc.strerror}")
            return
        stamp = (stat.st_size, stat.st_mtime_ns)
        if stamp == self._stamp:
            return
        try:
            identities, error = identities_in(orjson.loads(self.path.read_bytes())), None
        except (OSError, ValueError) as exc:
            identities, error = {}, str(exc)
        self._use(stamp, identities, error)

    def _use(self, stamp: tuple, identities: dict[str, dict], error: str | None) -> None:
        if error is not None and stamp != self._stamp:  # once per change, not per call
            log.warning("identities_file_unusable", file=str(self.path), error=error)
        self._stamp, self._identities = stamp, identities


def identities_in(document) -> dict[str, dict]:
    """agent id -> identity record, from any of the three shapes; ValueError otherwise."""
    if isinstance(document, dict) and isinstance(document.get("identities"), (dict, list)):
        document = document["identities"]
    if isinstance(document, list):
        found = {}
        for record in document:
            if not (isinstance(record, dict) and isinstance(record.get("agent_id"), str)):
                raise ValueError("a list of identities needs an agent_id in every record")
            found[record["agent_id"]] = record
        return found
    if isinstance(document, dict) and all(isinstance(v, dict) for v in document.values()):
        return {agent_id: {"agent_id": agent_id, **record}
                for agent_id, record in document.items()}
    raise ValueError("expected an object keyed by agent id, or a list of records with agent_id")
