"""The seam between the agent plugin and a cluster of daemons (docs/CLUSTER.md, "Agents").

The agent plugin runs its agents; in cluster mode an `AgentCluster` (the cluster plugin's, found
through the `ksi_agent_cluster` hook in agent/hookspecs.py) decides which node each agent runs
on (a lease per agent, renewed by heartbeat), tells every node where each agent is, and carries
requests to the agent's home node. The checkpoints another node resumes an agent from are the
shared `AgentStore`'s (store_seam.py, checkpoints.py); the lease says who may write them. The
agent plugin never imports the cluster plugin; the two meet here.

Without a cluster (the single daemon) there is no `AgentCluster` and nothing here is used.
"""
from __future__ import annotations

from typing import Protocol


class AgentsHere(Protocol):
    """What the agent plugin offers the cluster: the agents of this node."""

    async def answer_forwarded(self, event: str, data: dict, correlation_id: str | None,
                               push_back=None) -> dict:
        """Run `event` (agent:send, agent:terminate, agent:info, ...) for an agent of this node,
        sent by another node; the reply data, or a KSIError. Never forwarded again.
        `push_back`, when the asking node takes pushes for this request: an async
        `(event, data) -> bool` carrying a later push (the reply of an agent:send without
        wait) to the asking client there; False when that node did not take it."""

    async def adopt(self, agent_id: str) -> None:
        """This node now holds the agent's lease: resume it from its shared checkpoint (a
        KSIError, or any exception, gives the lease back for another node to try)."""

    def give_up(self, agent_id: str, why: str) -> None:
        """This node no longer holds the agent (its lease was taken, or could not be renewed):
        stop it at once, without writing anything about it to the cluster."""


class AgentCluster(Protocol):
    node_id: str
    lease_ttl_s: float  # a lease not renewed is gone after this long
    serving: bool  # this node hears the cluster: where agents run is known and kept current

    def open(self, here: AgentsHere) -> None:
        """Called once at the agent plugin's start-up, before any other method."""

    async def claim(self, agent_id: str) -> None:
        """A new agent on this node: take its lease. Raises KSIError `conflict` if another
        node holds it, `unavailable` if the cluster cannot say."""

    async def release(self, agent_id: str) -> None:
        """Give the agent's lease up (it was terminated, or its spawn failed). A no-op for an
        agent this node does not hold."""

    def home_of(self, agent_id: str) -> str | None:
        """The node the agent runs on, as this node last heard; None if unknown."""

    def resuming(self, agent_id: str) -> bool:
        """This node holds the agent's lease and is resuming it (`adopt` has not returned)."""

    def directory(self) -> list[dict]:
        """Every agent of the cluster that is not terminated, as {**its agents row, "node":
        its home or None while it moves}, from the shared checkpoints as last heard."""

    async def forward(self, node_id: str, event: str, data: dict, correlation_id: str | None,
                      timeout_s: float, pushes=None) -> dict:
        """Send a request to `node_id`'s agent plugin (its `answer_forwarded`): the reply data,
        or the KSIError it answered; `unavailable` if that node does not answer or has gone
        silent (cut off from NATS), `timeout` after `timeout_s`. `pushes`: a callable
        `(event, data)` of this node, given the pushes that node sends back for the request
        later (its `push_back`)."""
