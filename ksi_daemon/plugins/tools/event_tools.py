"""Every KSI event as a tool: its schema from its declaration, run by emitting it.

The catalog comes from `system:discover` (what clients are shown, with `internal` marks), so
the tools plugin needs no view of the router. Events only plugins may send, and the dangerous
ones, are offered only when named exactly (`explicit_only`).
"""
from __future__ import annotations

from typing import Any, Awaitable, Callable

from .registry import Tool, model_name_of

DANGEROUS = frozenset({"system:shutdown", "state:clear"})
# Fields through which an event says who sends it: a call made for an agent always carries the
# agent's id there, whatever the model wrote, so a model cannot speak as another agent.
IDENTITY_FIELDS = ("sender",)

Emit = Callable[..., Awaitable[Any]]  # PluginContext.emit


def event_tools(catalog: list[dict], emit: Emit, explicit_only: frozenset[str]) -> list[Tool]:
    return [event_tool(entry, emit, explicit_only) for entry in catalog]


def event_tool(entry: dict, emit: Emit, explicit_only: frozenset[str]) -> Tool:
    name, parameters = entry["event"], entry["parameters"]
    identity = tuple(f for f in IDENTITY_FIELDS if f in parameters.get("properties", {}))
    return Tool(name=name, model_name=model_name_of(name), description=entry["summary"],
                parameters=parameters, source="event", idempotent=False,
                explicit_only=bool(entry.get("internal")) or name in explicit_only,
                timeout_s=None, run=event_runner(name, emit, identity))


def event_runner(name: str, emit: Emit, identity: tuple[str, ...]):
    async def run(arguments: dict, agent_id: str | None) -> Any:
        if agent_id is not None and identity:
            arguments = {**arguments, **{field: agent_id for field in identity}}
        # (the event's own validation answers bad arguments; its handler knows the agent)
        return await emit(name, arguments, agent_id=agent_id)

    return run
