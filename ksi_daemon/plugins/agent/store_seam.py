"""The seam between the agent plugin and where agents' checkpoints are kept.

A checkpoint is one agent as a node needs it to run the agent: its record, every message of its
inbox with its state, and its schedules. Its `record` has the shape of
`store.read_checkpoint`:

    {"agent": {agent_id, profile, config (the profile as JSON), session_id, status,
               created_at, updated_at, turns, messages_handled, restarts, error},
     "messages": [{message_id, seq, sender, topic, reply_to, content, received_at, state,
                   attempts, reply, request_id, turn}, ...],   # by seq
     "schedules": [{schedule_id, every_s, cron, prompt, created_at, next_at,
                    last_message_id, fired, coalesced}, ...]}

(The conversation of its session is in the conversation store, not here.)

Two implement `AgentStore`: `SqliteAgentStore` (sqlite_checkpoints.py), the node's own
agents.db, which the plugin keeps row by row as it always has; and the cluster plugin's
`KvAgentStore` (ksi_daemon/plugins/cluster/kv_agents.py), one JetStream KV bucket every node
reads. In cluster mode the first plugin answering the `ksi_agent_store` hook (hookspecs.py)
supplies the shared one, and after every change of an agent's rows the plugin writes the agent's
checkpoint there (agent/checkpoints.py), so a checkpoint written on node A is read on node B.

Every record carries a `revision`: a number that grows with every write of that agent's record
and never repeats for an agent id (the KV revision in cluster mode). A write or delete that
names `if_revision=N` happens only if the stored record is still at revision N (0: only if
there is none); otherwise it raises `KSIError(CONFLICT)` with `details.current_revision`. That
is the building block of fencing: "write the checkpoint only if the record is still at the
revision this node last wrote".
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Checkpoint:
    agent_id: str
    record: dict  # the shape above
    revision: int  # what a CAS write names


class AgentStore(Protocol):
    async def read(self, agent_id: str) -> Checkpoint | None:
        """The agent's checkpoint as stored now, or None when there is none. A shared store
        asks its server (no cache): what it returns was there when the call began or later.
        Raises `KSIError(UNAVAILABLE)` when the store cannot be reached."""

    async def list(self) -> list[Checkpoint]:
        """Every stored checkpoint (terminated agents' included), each with its revision."""

    async def write(self, agent_id: str, record: dict, if_revision: int | None = None) -> int:
        """Store `record` as the agent's checkpoint, replacing what was there; returns its new
        revision. `if_revision=N`: only if the stored record is at revision N (0: only if there
        is none), else `KSIError(CONFLICT, details={"current_revision": ...})`. Answered once
        stored: for the KV store, once JetStream acknowledged it (docs/CLUSTER.md)."""

    async def delete(self, agent_id: str, if_revision: int | None = None) -> bool:
        """Remove the agent's checkpoint; whether there was one. `if_revision` as in write."""
