"""The node's own agent checkpoints: agents.db, read and written as an AgentStore.

The agent plugin keeps agents.db row by row (store.py); this reads an agent's rows as one
checkpoint and writes one back whole, on the database's writer thread so that a read follows
every commit before it. The revision is agents.db's `agent_revisions` row of the agent, which
triggers bump on every change of its rows.
"""
from __future__ import annotations

from . import store
from .store_seam import Checkpoint


class SqliteAgentStore:
    """An AgentStore (store_seam.py) on the agent plugin's SqliteWriter."""

    def __init__(self, writer):
        self.writer = writer

    async def read(self, agent_id: str) -> Checkpoint | None:
        found = await self.writer.submit(store.read_checkpoint, agent_id)
        return None if found is None else Checkpoint(agent_id, found[0], found[1])

    async def list(self) -> list[Checkpoint]:
        found = await self.writer.submit(_read_all)
        return [Checkpoint(agent_id, record, revision) for agent_id, (record, revision)
                in found]

    async def write(self, agent_id: str, record: dict, if_revision: int | None = None) -> int:
        return await self.writer.submit(store.write_checkpoint, agent_id, record, if_revision)

    async def delete(self, agent_id: str, if_revision: int | None = None) -> bool:
        return await self.writer.submit(store.delete_checkpoint, agent_id, if_revision)


def _read_all(conn) -> list[tuple[str, tuple]]:
    return [(agent_id, store.read_checkpoint(conn, agent_id))
            for agent_id in store.agent_ids(conn)]
