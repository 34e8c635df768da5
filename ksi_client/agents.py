"""The agent helpers of AsyncClient: the `agent:*` events of the agent plugin.

    agent = await client.spawn_agent("teacher", task="Explain recursion")
    reply = await client.send_to_agent(agent["agent_id"], "And iteration?", wait=True)
    print(reply["reply"]["text"])
    await client.terminate_agent(agent["agent_id"])

Each helper returns the reply's data (list helpers return the list itself); errors are the
daemon's: `not_found` for an unknown profile or agent, `conflict` for an agent id in use.
"""
from __future__ import annotations

from typing import Any

from ._data import without_none
from .completion import wait_for_completion


class AgentHelpers:
    """Mixed into AsyncClient (an EventClient): uses its emit()."""

    async def spawn_agent(self, profile: str | None = None, *, config: dict | None = None,
                          agent_id: str | None = None, task: str | None = None,
                          session_id: str | None = None, model: str | None = None) -> dict:
        """Start an agent from a named profile, or from an inline `config` (name, model,
        system_prompt, temperature, max_turns). `task`, if given, is its first message.
        Returns {agent_id, status: "running", profile, session_id}."""
        return await self.emit("agent:spawn", without_none(
            profile=profile, config=config, agent_id=agent_id, task=task,
            session_id=session_id, model=model))

    async def terminate_agent(self, agent_id: str) -> dict:
        """Stop an agent; returns {agent_id, status: "terminated"}."""
        return await self.emit("agent:terminate", {"agent_id": agent_id})

    async def list_agents(self, status: str | None = None) -> list[dict]:
        """The agents (running, restarting or failed; terminated ones only when asked by
        `status`), each {agent_id, profile, status, created_at, session_id, messages_handled}."""
        return (await self.emit("agent:list", without_none(status=status)))["agents"]

    async def agent_info(self, agent_id: str) -> dict:
        """One agent's record, with its model, turns, restarts, error and recent turns."""
        return await self.emit("agent:info", {"agent_id": agent_id})

    async def agent_profiles(self) -> list[dict]:
        """The profiles agents can be spawned from."""
        return (await self.emit("agent:profiles"))["profiles"]

    async def send_to_agent(self, agent_id: str, content: Any, *, sender: str | None = None,
                            wait: bool = False, timeout_s: float | None = None) -> dict:
        """Hand an agent a message; returns {message_id, delivered}.

        With `wait=True` the call also waits for the agent's answer, which comes back in
        `reply` ({text, request_id, session_id, turn}) to this caller only.
        """
        data = without_none(agent_id=agent_id, content=content, sender=sender,
                             timeout_s=timeout_s)
        if not wait:
            return await self.emit("agent:send", data)
        data["wait"] = True
        return await self.emit("agent:send", data, timeout=wait_for_completion(data))

