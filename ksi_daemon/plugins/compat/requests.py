"""Upstream KSI's request data, as today's schemas take it.

Each function returns the data unchanged unless it carries a field only upstream clients send
(a field today's schema refuses), so a request that is valid today means the same with
compatibility mode on. Shapes: docs/OPERATIONS.md, "Compatibility mode" (with the upstream
files and commits they were read from).
"""
from __future__ import annotations

# upstream's completion priorities (ksi_client EventBasedClient.create_completion_async) on
# today's numeric scale: higher runs first, 0 is the default
PRIORITIES = {"critical": 20, "high": 10, "normal": 0, "low": -10, "background": -20}
# sent by upstream completion clients, meaningless here (routing is by connection)
COMPLETION_EXTRAS = ("client_id", "agent_config", "injection_config")
# upstream SPAWN_AGENT hints for its composition selector, which this daemon does not have
SPAWN_HINTS = ("role", "capabilities")
# the largest state:list page: a `pattern` filters after listing, so it lists everything
LIST_EVERYTHING = 100_000


def completion_request(data: dict) -> dict:
    if not any(key in data for key in COMPLETION_EXTRAS) \
            and not isinstance(data.get("priority"), str):
        return data
    data = {k: v for k, v in data.items() if k not in COMPLETION_EXTRAS}
    if isinstance(data.get("priority"), str):
        # an unknown word is left for the schema to refuse, naming the field
        data["priority"] = PRIORITIES.get(data["priority"].lower(), data["priority"])
    return data


def spawn_request(data: dict) -> dict:
    """`context` joins the task (upstream gave it to the agent with its task); `composition`
    names the profile when no profile is given."""
    if not any(key in data for key in ("context", "composition", *SPAWN_HINTS)):
        return data
    data = {k: v for k, v in data.items() if k not in SPAWN_HINTS}
    context = data.pop("context", None)
    if context not in (None, "", {}):
        text = context if isinstance(context, str) else repr(context)
        data["task"] = f"{data['task']}\n\nContext: {text}" if data.get("task") else text
    composition = data.pop("composition", None)
    if composition is not None and "profile" not in data and "profile_name" not in data:
        data["profile"] = composition
    return data


def list_request(data: dict) -> dict:
    if "pattern" not in data:
        return data
    data = {k: v for k, v in data.items() if k != "pattern"}
    if data.get("namespace") is None:
        data.pop("namespace", None)
    data.setdefault("limit", LIST_EVERYTHING)
    return data


def publish_request(data: dict) -> dict:
    """Upstream's three publish shapes: {agent_id, event_type, data} (ksi_client),
    {sender, topic, payload} (interfaces/orchestrate.py), {from_agent, event_type, payload}
    (the PUBLISH command)."""
    upstream = ("event_type", "payload", "data", "message", "from_agent", "agent_id")
    if not any(key in data for key in upstream):
        return data
    topic = data.get("topic", data.get("event_type"))
    content = next((data[key] for key in ("content", "payload", "data", "message")
                    if key in data), None)
    sender = next((data[key] for key in ("sender", "from_agent", "agent_id")
                   if data.get(key) is not None), None)
    mapped = {"topic": topic, "content": content}
    if sender is not None:
        mapped["sender"] = sender
    return mapped


def subscribe_request(data: dict) -> dict:
    """Upstream subscribes its own connection, naming itself `agent_id`, to `event_types`
    (or `events`); today `agent_id` means an agent of the agent plugin, so it is dropped."""
    if "event_types" not in data and "events" not in data:
        return data
    return {"topics": data.get("event_types", data.get("events"))}


def unsubscribe_request(data: dict) -> dict:
    if "event_types" not in data and "events" not in data and "conversation_id" not in data:
        return data
    topics = data.get("event_types", data.get("events"))
    return {} if topics is None else {"topics": topics}
