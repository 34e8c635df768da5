"""Who an MCP request comes from: the tools it is offered, and the agent its calls act for.

Over stdio there is one caller, the host that started the server. Over HTTP the bearer token
says who calls: the host (the token file), or one of KSI's own agents (a token the `mcp`
plugin issued for it), offered only its profile's tools and acting with its identity.
"""
from __future__ import annotations

from dataclasses import dataclass

from .catalog import Exposure


@dataclass(frozen=True, slots=True)
class Caller:
    exposure: Exposure
    agent_id: str | None = None  # None: the host itself, no agent's identity

    @classmethod
    def agent(cls, agent_id: str | None, tools: list[str]) -> Caller:
        """An agent offered exactly `tools` (KSI names, already resolved), explicit-only ones
        included: naming a tool in a profile is what allows it (docs/TOOLS.md)."""
        return cls(Exposure(exactly=frozenset(tools)), agent_id)


NOBODY = Caller(Exposure(exactly=frozenset()))  # offered nothing: a request nobody vouched for
