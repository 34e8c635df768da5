"""Each agent's checkpoint copied to the shared store after every change (cluster mode only).

agents.db stays the node's own store, written row by row as always; after a write commits, the
agents it changed are read back from it as checkpoints (SqliteAgentStore) and written to the
shared store (the `ksi_agent_store` hook's, a KV bucket), one agent at a time in commit order,
before the write's caller goes on: a turn's record is shared before its reply goes out.

Each write names the revision this node last wrote of the agent (`if_revision`), so a record
someone else wrote meanwhile is never overwritten: the write is refused, logged as
`agent_checkpoint_superseded`, and that agent is not copied again by this node (deciding who
owns an agent is the lease's work, not this module's). An agent this node has not written since
it started is written without a condition. A copy the shared store could not take (NATS away)
is retried every RETRY_EVERY_S until it succeeds; the next change copies it too.

With the agents' leases (cluster mode, agent/cluster_seam.py) copies are `strict`: the copy of
the agent a write is about must succeed before the write's effect is told to anyone (so an
accepted message or a recorded turn is in the shared store), and a refused copy means another
node has resumed the agent: `on_superseded` stops it here. The revision to name starts from what
the node found when it claimed or adopted the agent (`adopted`), never unconditional.
"""
from __future__ import annotations

import asyncio

import structlog

from ...protocol import CONFLICT, UNAVAILABLE, KSIError
from . import store
from .store_seam import AgentStore

RETRY_EVERY_S = 1.0
log = structlog.get_logger("ksi.plugin.agent")


def agents_changed_by(op, args: tuple) -> list[str]:
    """The agents whose rows the writer op `op(conn, *args)` changes (store.py's ops)."""
    if op in (store.insert_agent, store.insert_schedule, store.fire_schedule):
        return [args[0]["agent_id"]]
    if op is store.add_message:
        return [args[0][0]]
    if op is store.record_turn:  # and the agent its reply is forwarded to
        return [args[0]] + ([args[8][0]] if args[8] is not None else [])
    if op in (store.delete_agent, store.save_status, store.mark_done, store.terminate,
              store.delete_schedules_of):
        return [args[0]]
    return []  # store.delete_schedule names a schedule: its caller copies the agent


class CheckpointCopier:
    def __init__(self, local: AgentStore, shared: AgentStore):
        self.local, self.shared = local, shared
        self.revisions: dict[str, int] = {}  # the shared revision this node last wrote
        self.superseded: set[str] = set()  # written elsewhere since: not copied again
        self.waiting: set[str] = set()  # not copied yet (the shared store was unreachable)
        self._locks: dict[str, asyncio.Lock] = {}
        self.on_superseded = None  # called with the agent id when a copy is refused

    def adopted(self, agent_id: str, revision: int) -> None:
        """This node now owns the agent, whose shared checkpoint is at `revision` (0: none)."""
        self.revisions[agent_id] = revision
        self.superseded.discard(agent_id)
        self.waiting.discard(agent_id)

    async def copy(self, agent_ids, strict: bool = False) -> None:
        for index, agent_id in enumerate(agent_ids):
            await self._copy(agent_id, strict and index == 0)

    async def _copy(self, agent_id: str, strict: bool = False) -> None:
        if agent_id in self.superseded:
            if strict:
                raise superseded(agent_id)
            return
        lock = self._locks.setdefault(agent_id, asyncio.Lock())
        async with lock:  # one agent's copies in order: each names the revision before it
            try:
                await self._copy_now(agent_id)
            except KSIError as exc:
                if exc.code == CONFLICT:
                    self.superseded.add(agent_id)
                    self.waiting.discard(agent_id)
                    log.error("agent_checkpoint_superseded", agent_id=agent_id,
                              error=exc.message)
                    if self.on_superseded is not None:
                        self.on_superseded(agent_id)
                    if strict:
                        raise superseded(agent_id) from None
                else:
                    self.waiting.add(agent_id)
                    log.warning("agent_checkpoint_not_shared", agent_id=agent_id,
                                error=exc.message)
                    if strict:
                        raise

    async def _copy_now(self, agent_id: str) -> None:
        checkpoint = await self.local.read(agent_id)
        known = self.revisions.get(agent_id)
        if checkpoint is None:
            await self.shared.delete(agent_id, if_revision=known)
            self.revisions.pop(agent_id, None)
        else:
            self.revisions[agent_id] = await self.shared.write(agent_id, checkpoint.record,
                                                               if_revision=known)
        self.waiting.discard(agent_id)

    async def retry_waiting(self) -> None:
        """A service: copy again what the shared store could not take."""
        while True:
            await asyncio.sleep(RETRY_EVERY_S)
            for agent_id in list(self.waiting):
                await self._copy(agent_id)


def superseded(agent_id: str) -> KSIError:
    return KSIError(UNAVAILABLE, f"agent {agent_id} has moved to another node, which resumed "
                                 "it; this node stopped it")
