"""Today's reply data in the shapes upstream KSI's clients read.

Only for the connections that announced themselves as upstream clients (`transport:connection`,
`admin:identify`, `agent:connect`): today's clients on the same socket read today's shapes.
"""
from __future__ import annotations


def set_reply(result: dict) -> dict:
    return {**result, "status": "set"}  # MultiAgentClient.set_state: status == "set"


def delete_reply(result: dict) -> dict:
    # MultiAgentClient.delete_state: status in ("deleted", "not_found")
    return {**result, "status": "deleted" if result.get("deleted") else "not_found"}


def list_reply(result: dict, pattern: str | None) -> dict:
    """Upstream's state:list `pattern` was a substring of the key."""
    if pattern is None:
        return result
    keys = [key for key in result.get("keys", []) if pattern in key]
    return {**result, "keys": keys, "count": len(keys), "pattern": pattern}


def plugins_by_name(result: dict) -> dict:
    """EventBasedClient.get_capabilities iterates the reply as {name: info}, reading
    info["capabilities"] {event_namespaces, commands, provides_services}."""
    keyed = {}
    for plugin in result.get("plugins", []):
        events = plugin.get("events", [])
        keyed[plugin["name"]] = {**plugin, "capabilities": {
            "event_namespaces": sorted({event.split(":", 1)[0] for event in events}),
            "commands": events, "provides_services": []}}
    return keyed


def discover_by_namespace(result: dict) -> dict:
    """Upstream's discovery answered {namespaces, events: {namespace: [entry]}, total_events};
    its clients look an event up in events[namespace]."""
    grouped: dict[str, list] = {}
    for entry in result.get("events", []):
        grouped.setdefault(entry["event"].split(":", 1)[0], []).append(entry)
    total = sum(len(entries) for entries in grouped.values())
    return {"namespaces": list(grouped), "events": grouped, "total_events": total,
            "count": total}
