"""Events across nodes: what `system:subscribe` on one node sees of the others.

An `EventBridge` (ksi_daemon/plugins/system/bridge_seam.py), on core NATS (not JetStream:
subscriptions to events are live, as on a single daemon; nothing is replayed).

- **Interest.** Each node writes the patterns its connections subscribed to under its node id
  in the KV bucket `ksi_interest` (rewritten every `REFRESH_S`; a key not rewritten for
  `INTEREST_TTL_S`, a dead node's, expires). Every node watches the bucket and subscribes the
  router's fan-out (remote_events.py) to the union of the other nodes' patterns. So an event
  goes on the wire only if somebody elsewhere subscribed to it, and nothing is published when
  nobody did.
- **Out.** A wanted event leaves as the push line the router encoded, on the subject
  `ksi.event.<node>.<event name's parts>` (subjects.py), batched once per loop turn.
- **In.** Each node subscribes to the subjects of its own patterns, from any node
  (`ksi.event.*.<...>`), skips its own, and fans the event out to its subscribers as if raised
  here, but never sends it out again.
- **What never crosses** (`LOCAL_ONLY`): `system:*` (about one node: its health, metrics,
  subscriptions, discovery) and `state:changed` (every node already raises it for every change,
  from its watch of the state bucket: crossing would announce each change twice).
"""
from __future__ import annotations

import asyncio
import fnmatch

import orjson
import structlog

from .bounded import ask, let_go
from .subjects import covers, event_filter, event_subject

INTEREST_BUCKET = "ksi_interest"
INTEREST_TTL_S = 30.0
REFRESH_S = 10.0
LOCAL_ONLY = ("system:*", "state:changed")
_PUSH_PREFIX = b'{"type":"event","event":"'  # how encode_push starts every line
log = structlog.get_logger("ksi.plugin.cluster")


class ClusterEventBridge:
    def __init__(self, node, replicas: int, timeout_s: float):
        self.node, self.replicas, self.timeout_s = node, replicas, timeout_s
        self.local = None
        self.serving = False
        self.kv = self.watcher = None
        self.watching: asyncio.Task | None = None
        self.remote: dict[str, frozenset] = {}  # node id -> its patterns
        self.published: frozenset | None = None  # our patterns as last written to the bucket
        self.wanted: frozenset | None = None  # the other nodes' patterns, as handed to the router
        self.subscriptions: dict[str, object] = {}  # subject filter -> NATS subscription
        self.outbox: list[tuple[str, bytes]] = []
        self._local_only: dict[str, bool] = {}
        self._syncing: asyncio.Lock | None = None

    # ---- the EventBridge seam ----------------------------------------------------------------

    def open(self, local) -> None:
        self.local = local
        self._syncing = asyncio.Lock()
        self.node.listen(self)
        if self.node.jetstream_ok:  # the node came up before the daemon was ready
            asyncio.ensure_future(self.cluster_up(self.node.nc.jetstream(
                timeout=self.timeout_s)))

    def export(self, line: bytes) -> None:
        if not self.serving:
            return  # live events only: while NATS is away, other nodes miss this one
        event = event_name_of(line)
        if event is None or self._stays_local(event):
            return
        if not self.outbox:
            asyncio.get_running_loop().call_soon(self._send_outbox)
        self.outbox.append((event_subject(self.node.node_id, event), line))

    async def local_interest_changed(self) -> None:
        if self.serving and self.local is not None:
            try:
                await self._sync_interest()
            except Exception as exc:  # noqa: BLE001 - the refresh catches up; health says why
                log.warning("cluster_interest_not_published", error=repr(exc))

    # ---- the connection comes and goes (a ClusterListener) -----------------------------------

    async def cluster_up(self, js) -> None:
        if self.local is None:
            return  # not opened yet: the daemon is still starting
        kv = await self._bucket(js)
        await self._stop_watching()
        watcher = await kv.watchall()
        remote = {}
        while True:
            entry = await watcher.updates(timeout=max(self.timeout_s, 10.0))
            if entry is None:
                break
            _apply(remote, entry, self.node.node_id)
        self.kv, self.watcher, self.remote = kv, watcher, remote
        self.watching = asyncio.ensure_future(self._follow(watcher))
        self.serving = True
        self.published = None  # write ours again: the bucket may have lost it
        await self._sync_interest()
        self._want_remote()

    def cluster_down(self) -> None:
        self.serving = False

    async def _bucket(self, js):
        from nats.js.api import KeyValueConfig, StorageType
        from nats.js.errors import BucketNotFoundError
        try:
            return await js.key_value(INTEREST_BUCKET)
        except BucketNotFoundError:
            # Memory is enough: every node writes its key again within REFRESH_S. The marker
            # tells the watchers when a dead node's key expired. Replicated as the other
            # stores are: with one copy, losing its NATS server would stop every node's
            # bridge (and keep a node starting then from coming up).
            return await js.create_key_value(KeyValueConfig(
                bucket=INTEREST_BUCKET, history=1, ttl=INTEREST_TTL_S,
                storage=StorageType.MEMORY, limit_marker_ttl=INTEREST_TTL_S,
                replicas=self.replicas))

    async def _follow(self, watcher) -> None:
        async for entry in watcher:
            if entry is not None:
                _apply(self.remote, entry, self.node.node_id)
                self._want_remote()

    async def _stop_watching(self) -> None:
        if self.watching is not None:
            self.watching.cancel()
            self.watching = None
        watcher, self.watcher = self.watcher, None
        if watcher is not None:
            await let_go(watcher.stop(), self.timeout_s)

    def _want_remote(self) -> None:
        wanted = frozenset().union(*self.remote.values())
        if wanted != self.wanted:  # (each node rewrites its key every REFRESH_S, mostly unchanged)
            self.wanted = wanted
            self.local.want_remote(set(wanted))

    # ---- this node's interest: subjects to hear, patterns to advertise -----------------------

    async def refresh_forever(self) -> None:
        """Keep our key alive, and notice subscriptions that ended with their connection."""
        while True:
            await asyncio.sleep(REFRESH_S)
            if self.serving and self.local is not None:
                try:
                    await self._sync_interest(rewrite=True)
                except Exception as exc:  # noqa: BLE001 - tried again next time
                    log.warning("cluster_interest_not_refreshed", error=repr(exc))

    async def _sync_interest(self, rewrite: bool = False) -> None:
        async with self._syncing:
            patterns = frozenset(self.local.local_patterns())
            await self._hear(patterns)
            if rewrite or patterns != self.published:
                await ask(self.kv.put(self.node.node_id, orjson.dumps(sorted(patterns))),
                          self.timeout_s, "the cluster's interest bucket", self.node.nats_url)
                self.published = patterns

    async def _hear(self, patterns: frozenset) -> None:
        """Subscribe to exactly the subjects of `patterns`, none covering another (overlapping
        subscriptions would bring one event twice)."""
        filters = {event_filter(p) for p in patterns}
        filters = {f for f in filters if not any(o != f and covers(o, f) for o in filters)}
        for subject in [s for s in self.subscriptions if s not in filters]:
            sub = self.subscriptions.pop(subject)
            try:
                await sub.unsubscribe()
            except Exception:  # noqa: BLE001 - gone with the connection
                pass
        for subject in sorted(filters - set(self.subscriptions)):
            self.subscriptions[subject] = await self.node.nc.subscribe(subject,
                                                                        cb=self._arrived)

    async def _arrived(self, msg) -> None:
        if msg.subject.split(".", 3)[2] == self.node.node_id:
            return  # our own, heard because another node wants it too
        push = orjson.loads(msg.data)
        self.local.deliver(push["event"], push.get("data"), push.get("correlation_id"))

    # ---- out ---------------------------------------------------------------------------------

    def _send_outbox(self) -> None:
        batch, self.outbox = self.outbox, []
        if batch and self.serving:
            asyncio.ensure_future(self._send(batch))

    async def _send(self, batch) -> None:
        try:
            for subject, line in batch:
                await self.node.nc.publish(subject, line)
        except Exception as exc:  # noqa: BLE001 - live events: lost with the connection
            log.warning("cluster_events_not_sent", events=len(batch), error=repr(exc))

    def _stays_local(self, event: str) -> bool:
        local = self._local_only.get(event)
        if local is None:
            if len(self._local_only) > 4096:
                self._local_only.clear()
            local = self._local_only[event] = any(fnmatch.fnmatchcase(event, p)
                                                  for p in LOCAL_ONLY)
        return local

    async def close(self) -> None:
        """A clean stop: take our interest back at once rather than at its expiry."""
        self.serving = False
        await self._stop_watching()
        if self.kv is not None and self.node.nc is not None and self.node.nc.is_connected:
            try:
                await asyncio.wait_for(self.kv.delete(self.node.node_id), self.timeout_s)
            except Exception:  # noqa: BLE001 - it expires anyway
                pass


def event_name_of(line: bytes) -> str | None:
    """The event name of a push line, read without decoding the whole line."""
    if line.startswith(_PUSH_PREFIX):
        end = line.find(b'"', len(_PUSH_PREFIX))
        name = line[len(_PUSH_PREFIX):end]
        if end > 0 and b"\\" not in name:
            return name.decode()
    try:
        return orjson.loads(line).get("event")
    except orjson.JSONDecodeError:
        return None


def _apply(remote: dict, entry, own_node: str) -> None:
    if entry.key == own_node:
        return
    if entry.operation in ("DEL", "PURGE") or not entry.value:
        remote.pop(entry.key, None)
    else:
        remote[entry.key] = frozenset(orjson.loads(entry.value))
