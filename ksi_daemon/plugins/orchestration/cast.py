"""Bringing an orchestration's agents into being, and letting them go.

Each participant is spawned from its role's built-in profile with an inline config: the same
character, model and temperature, but a system prompt that starts with the role's part in this
conversation, and enough turns for every round; tools given to the start replace the profile's.
"""
from __future__ import annotations

import asyncio
from typing import Awaitable, Callable

import structlog

from ...protocol import NOT_FOUND, KSIError
from .modes import Mode, system_prompt_for
from .models import Participant

Ask = Callable[[str, dict], Awaitable[dict]]
log = structlog.get_logger("ksi.plugin.orchestration")


async def spawn_cast(ask: Ask, orchestration_id: str, mode: Mode, topic: str, agents: int,
                     rounds: int, model: str | None,
                     tools: list[str] | None = None,
                     nodes: list[str] | None = None) -> list[Participant]:
    """Spawn one agent per role; if one cannot be spawned, the others are terminated again.
    With `nodes` (cluster mode), the agents are spread over them in turn; the run itself
    stays on this node and reaches them through agent:send, wherever they are."""
    if tools:
        await check_tools(ask, tools)
    profiles = {p["name"]: p for p in (await ask("agent:profiles", {}))["profiles"]}
    cast = mode.cast(agents)
    participants: list[Participant] = []
    try:
        for index, (role, agent_id) in enumerate(zip(cast, agent_ids(orchestration_id, cast))):
            profile = profiles.get(role.profile)
            if profile is None:
                raise KSIError(NOT_FOUND, f"mode {mode.name} needs the agent profile "
                                          f"{role.profile!r}, which agent:profiles does not list")
            config = {
                "name": role.profile,
                "model": model or profile.get("model"),
                "system_prompt": system_prompt_for(role, topic, profile.get("system_prompt") or ""),
                "temperature": profile.get("temperature"),
                "tools": tools if tools is not None else profile.get("tools"),
                # Each agent speaks once per round; its own limit must not end the run early.
                "max_turns": max(int(profile.get("max_turns") or 0), rounds + 1)}
            request = {"agent_id": agent_id, "config": {
                key: value for key, value in config.items() if value is not None}}
            node = nodes[index % len(nodes)] if nodes else None
            if node is not None:
                request["node"] = node
            spawned = await ask("agent:spawn", request)
            participants.append(Participant(agent_id=spawned["agent_id"], role=role.name,
                                            profile=role.profile,
                                            session_id=spawned.get("session_id"), node=node))
    except BaseException:
        await terminate_agents(ask, participants)
        raise
    return participants


async def check_tools(ask: Ask, tools: list[str]) -> None:
    """Refuse unknown tool names before any agent exists: each agent's first turn would fail."""
    unknown = (await ask("tools:resolve", {"names": tools}))["unknown"]
    if unknown:
        raise KSIError(NOT_FOUND, f"no tool named {', '.join(unknown)} (tools:list lists them)",
                       {"unknown": unknown})


def agent_ids(orchestration_id: str, cast) -> list[str]:
    """Readable ids: `<orchestration>-opponent`, numbered when a role appears more than once."""
    names = [role.name for role in cast]
    seen: dict[str, int] = {}
    ids = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        suffix = f"-{seen[name]}" if names.count(name) > 1 else ""
        ids.append(f"{orchestration_id}-{name}{suffix}")
    return ids


async def terminate_agents(ask: Ask, participants: list[Participant]) -> None:
    """Terminate them all at once: an agent stopped mid-completion takes a moment each."""
    await asyncio.gather(*(terminate_agent(ask, p.agent_id) for p in participants))


async def terminate_agent(ask: Ask, agent_id: str) -> None:
    try:
        await ask("agent:terminate", {"agent_id": agent_id})
    except KSIError as exc:
        if exc.code != NOT_FOUND:  # already gone is what we wanted
            log.warning("orchestration_agent_not_terminated", agent_id=agent_id,
                        error=exc.message)
