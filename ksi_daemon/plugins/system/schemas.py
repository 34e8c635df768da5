"""Event descriptions generated from the handlers' pydantic models (cached per model)."""
from __future__ import annotations

from functools import lru_cache

from ...event_system import json_schema_of

NO_PARAMETERS = {"type": "object", "properties": {}}


@lru_cache(maxsize=None)
def json_schema(model) -> dict:
    return json_schema_of(model) if model is not None else NO_PARAMETERS


def describe_events(router, active_plugins, with_returns: bool = False) -> list[dict]:
    entries = []
    for name, handler in router.handlers.items():
        if handler.plugin is None or handler.plugin.state != "active":
            continue
        entry = {"event": name, "summary": handler.summary or "",
                 "parameters": json_schema(handler.model), "plugin": handler.plugin.name}
        if router.client_handlers.get(name) is not handler:  # clients find a refusal there
            entry["internal"] = True
        if handler.streams:  # its pushes come before its reply (PROTOCOL.md §1)
            entry["streams"] = True
        if with_returns and handler.returns is not None:
            entry["returns"] = json_schema(handler.returns)
        entries.append(entry)
    indexed = {e["event"] for e in entries}
    for record in active_plugins:  # names answered through ksi_handle_event
        for command in record.capabilities.commands:
            if command not in indexed:
                entries.append({"event": command, "summary": "answered by ksi_handle_event",
                                "parameters": NO_PARAMETERS, "plugin": record.name})
    return sorted(entries, key=lambda e: e["event"])
