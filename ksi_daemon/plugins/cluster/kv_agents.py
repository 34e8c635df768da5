"""Agent checkpoints in cluster mode: one JetStream KV bucket, one key per agent.

The agent plugin writes each agent's checkpoint here after every change of its rows (through
its `ksi_agent_store` seam: agent/store_seam.py, agent/checkpoints.py); any node reads it. The
key is the agent id, escaped as the state keys are (kv_keys.py); the value the checkpoint's
JSON. A checkpoint's `revision` is the KV revision of its key, so a write naming `if_revision`
is the server's expected-last-subject-sequence check: one decision for the whole cluster, the
building block of fencing by lease revision. Reads ask the server, not a cache: a checkpoint is
read when an agent moves, and it must be the newest.
"""
from __future__ import annotations

import orjson

from ...protocol import CONFLICT, KSIError
from ..agent.store_seam import Checkpoint
from .bounded import ask, unreachable
from .kv_keys import escape, unescape
from .kv_writes import WrongLastSequence, open_bucket, publish_key

WHAT = "the cluster's agent checkpoints"
INITIAL_VALUES_WITHIN_S = 10.0


class KvAgentStore:
    """An AgentStore (agent/store_seam.py) on the bucket `bucket`."""

    def __init__(self, node, bucket: str, replicas: int, timeout_s: float):
        self.node, self.bucket, self.replicas, self.timeout_s = node, bucket, replicas, timeout_s
        self.js = self.kv = None
        self.serving = False
        node.listen(self)

    # ---- the connection comes and goes (a ClusterListener) -----------------------------------

    async def cluster_up(self, js) -> None:
        kv = await open_bucket(js, self.bucket, self.replicas)
        self.js, self.kv, self.serving = js, kv, True

    def cluster_down(self) -> None:
        self.serving = False

    # ---- the AgentStore ----------------------------------------------------------------------

    async def read(self, agent_id: str) -> Checkpoint | None:
        revision, value = await self._server_entry(agent_id)
        if value is None:
            return None
        return Checkpoint(agent_id, orjson.loads(value), revision)

    async def list(self) -> list[Checkpoint]:
        self._check_serving()
        watcher = await ask(self.kv.watchall(ignore_deletes=True), self.timeout_s, WHAT,
                            self.node.nats_url)
        found = []
        try:
            while True:
                entry = await watcher.updates(timeout=max(self.timeout_s,
                                                          INITIAL_VALUES_WITHIN_S))
                if entry is None:  # the initial values are all in
                    return found
                if entry.operation is None and entry.value:
                    found.append(Checkpoint(unescape(entry.key), orjson.loads(entry.value),
                                            entry.revision))
        finally:
            await watcher.stop()

    async def write(self, agent_id: str, record: dict, if_revision: int | None = None) -> int:
        last = await self._expected_last(agent_id, if_revision)
        return await self._publish(agent_id, orjson.dumps(record), last, if_revision)

    async def delete(self, agent_id: str, if_revision: int | None = None) -> bool:
        revision, value = await self._server_entry(agent_id)
        if value is None:
            if if_revision:
                raise self._conflict(agent_id, if_revision, None)
            return False
        if if_revision is not None and if_revision != revision:
            raise self._conflict(agent_id, if_revision, revision)
        await self._publish(agent_id, b"", revision, if_revision, delete=True)
        return True

    # ---- talking to NATS ---------------------------------------------------------------------

    def _check_serving(self) -> None:
        if not self.serving:
            raise unreachable(WHAT, self.node)

    async def _server_entry(self, agent_id: str) -> tuple[int, bytes | None]:
        """(the revision of the key's last message, 0 if none; its value, None if absent)."""
        from nats.js.errors import KeyNotFoundError
        self._check_serving()
        try:
            entry = await ask(self.kv.get(escape(agent_id)), self.timeout_s, WHAT,
                              self.node.nats_url)
        except KeyNotFoundError as exc:  # (KeyDeletedError too: its entry is the marker)
            marker = getattr(exc, "entry", None)
            return (marker.revision if marker is not None else 0), None
        return entry.revision, entry.value

    async def _expected_last(self, agent_id: str, if_revision: int | None) -> int | None:
        """The revision the write must find: None (any), N, or for 0 the delete marker's."""
        if if_revision is None or if_revision > 0:
            return if_revision
        revision, value = await self._server_entry(agent_id)
        if value is not None:
            raise self._conflict(agent_id, 0, revision)
        return revision

    async def _publish(self, agent_id: str, payload: bytes, last: int | None,
                       if_revision: int | None, *, delete: bool = False) -> int:
        self._check_serving()
        try:
            return await publish_key(self.js, self.bucket, escape(agent_id), payload, last,
                                     timeout_s=self.timeout_s, what=WHAT,
                                     nats_url=self.node.nats_url, delete=delete)
        except WrongLastSequence:
            current, value = await self._server_entry(agent_id)
            raise self._conflict(agent_id, if_revision,
                                 current if value is not None else None) from None

    def _conflict(self, agent_id: str, if_revision, current) -> KSIError:
        return KSIError(CONFLICT, f"agent {agent_id}'s checkpoint is at revision {current}, not "
                        f"{if_revision}", {"agent_id": agent_id, "current_revision": current,
                                           "if_revision": if_revision})
