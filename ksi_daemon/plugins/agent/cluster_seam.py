"""The seam between the agent plugin and a cluster of daemons (docs/CLUSTER.md, "Agents").

The agent plugin runs its agents; in cluster mode an `AgentCluster` (the cluster plugin's, found
through the `ksi_agent_cluster` hook in agent/hookspecs.py) decides which node each agent runs
on, keeps every agent's checkpoint where any node can resume it, and carries requests to the
agent's home node. The agent plugin never imports the cluster plugin; the two meet here.

Without a cluster (the single daemon) there is no `AgentCluster` and nothing here is used.
"""
from __future__ import annotations

from typing import Protocol

# A checkpoint is what another node needs to resume an agent, read from agents.db in the same
# transaction as the write it follows: {"agent": the agents row, "messages": its message rows
# (pending first in order, then the recent handled ones), "generation": the commit's order}.
Checkpoint = dict


class AgentsHere(Protocol):
    """What the agent plugin offers the cluster: the agents of this node."""

    async def answer_forwarded(self, event: str, data: dict, correlation_id: str | None) -> dict:
        """Run `event` (agent:send, agent:terminate, agent:info, ...) for an agent of this node,
        sent by another node; the reply data, or a KSIError. Never forwarded again."""

    async def adopt(self, checkpoint: Checkpoint) -> None:
        """This node now holds the agent's lease: resume it from its checkpoint."""

    def give_up(self, agent_id: str, why: str) -> None:
        """This node no longer holds the agent (its lease was taken, or could not be renewed):
        stop it at once, without writing anything about it to the cluster."""


class AgentCluster(Protocol):
    node_id: str

    def open(self, here: AgentsHere) -> None:
        """Called once at the agent plugin's start-up, before any other method."""

    async def claim(self, agent_id: str, checkpoint: Checkpoint) -> None:
        """A new agent on this node: take its lease and publish its first checkpoint. Raises
        KSIError `conflict` if the id is taken anywhere in the cluster, `unavailable` if the
        cluster cannot say."""

    async def checkpoint(self, agent_id: str, checkpoint: Checkpoint) -> None:
        """Publish the agent's state, fenced: only while this node holds the agent, and only
        over the record this node wrote last. Raises KSIError `unavailable` otherwise (and then
        tells `give_up`)."""

    async def release(self, agent_id: str) -> None:
        """The agent ended for good (terminated): its record and lease go. A no-op for an
        agent this node does not hold."""

    def home_of(self, agent_id: str) -> str | None:
        """The node the agent runs on, as this node last heard; None if unknown."""

    def directory(self) -> list[dict]:
        """Every agent of the cluster as {"node": ..., **its agents row}, as last heard."""

    async def forward(self, node_id: str, event: str, data: dict, correlation_id: str | None,
                      timeout_s: float) -> dict:
        """Send a request to `node_id`'s agent plugin (its `answer_forwarded`): the reply data,
        or the KSIError it answered; `unavailable` if that node does not answer, `timeout`
        after `timeout_s`."""
