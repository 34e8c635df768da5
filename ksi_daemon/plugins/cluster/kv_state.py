"""The state events' store in cluster mode: one JetStream KV bucket shared by every node.

Every node holds a mirror of the bucket's live keys, fed by a watch of the whole bucket: reads
are answered from it on the event loop (no round trip), writes go to NATS and are answered
after JetStream acknowledged them, which is when the write is stored (docs/CLUSTER.md, "What
an ack promises"). The writing node puts its own write into the mirror before answering, so it
reads its writes at once; other nodes see it when the watch brings it (milliseconds on a LAN).

Versions are KV revisions (the bucket stream's sequence of the key's last message): they
grow with every write of a key but not by one, and `if_version` is the server's
expected-last-subject-sequence check, so two nodes racing with the same version get exactly one
success. One connection's requests take effect in order: writes of one key are chained, a read
of a key waits for that key's writes queued before it, a clear waits for every write before it
and everything after it waits for the clear.

A clear is one decision for the cluster: a marker in the bucket whose revision splits the
bucket's order, followed by every node's watch, then a purge (docs/CLUSTER.md, "Clearing a
namespace"). Every change is recorded in the audit stream (state_audit.py) before its reply.
"""
from __future__ import annotations

import asyncio
import math
import os
import time

import orjson
import structlog

from ...protocol import CONFLICT, UNAVAILABLE, KSIError
from ..state.models import GLOBAL
from .kv_keys import (clear_marker_key, cleared_namespace, kv_key, namespace_filter,
                      state_key)
from . import kv_values
from .bounded import ask, let_go, unreachable
from .kv_writes import WrongLastSequence, open_bucket, publish_key

# The server places a delete marker when a key's TTL removes it, so every node's watch learns
# of the expiry; the marker itself is kept this long.
EXPIRY_MARKER_KEEP_S = 60.0
RETRIES_OF_A_RACE = 3  # a create over a deleted or expired key re-reads the key this often
log = structlog.get_logger("ksi.plugin.cluster")

WHAT = "the cluster's state store"


class KvStateStore:
    """A StateStore (ksi_daemon/plugins/state/store_seam.py) on the bucket `bucket`."""

    def __init__(self, node, bucket: str, replicas: int, timeout_s: float, audit_log=None):
        self.node, self.bucket, self.replicas, self.timeout_s = node, bucket, replicas, timeout_s
        self.audit_log = audit_log  # an AuditStream (state_audit.py), None with the audit off
        self.records_pending: set[asyncio.Task] = set()  # refusal/expiry records on their way
        self.live: dict[tuple, tuple] = {}  # (ns, key) -> (value JSON, revision, expires_at)
        self.by_namespace: dict[str, set] = {}  # the live keys of each namespace
        # The newest revision seen of each key, its deletes included: news older than what this
        # node already knows (the watch bringing back our own write) changes nothing.
        self.seen: dict[tuple, int] = {}
        # The revision of each namespace's last clear marker: a key of the namespace written
        # before it is gone, whenever the news of that key arrives.
        self.cleared_below: dict[str, int] = {}
        self.clears_waiting: dict[str, asyncio.Future] = {}  # this node's clears, by clear id
        self.serving = False  # connected, the mirror reconciled, the watch running
        self.js = self.kv = self.watcher = None
        self.watching: asyncio.Task | None = None
        self.tails: dict[tuple, asyncio.Task] = {}  # the last write queued of each key
        self.barrier: asyncio.Task | None = None  # a clear in progress

    # ---- the StateStore lifecycle ------------------------------------------------------------

    async def open(self, announce_all, report_degraded) -> None:
        self.announce_all = announce_all
        self.node.listen(self)

    def services(self) -> list:
        return []  # the connection is the cluster plugin's service

    async def close(self) -> None:
        self.serving = False
        await self._stop_watching()

    def queue_depths(self) -> dict:
        return {"writes_waiting": len(self.tails)}

    def record_refusal(self, event_name, message, connection) -> None:
        """A permission refusal into the audit stream, not waited for (the refusal is answered
        already); `state:audit` waits for the records still on their way."""
        if self.audit_log is None or not self.serving:
            return  # (the refusal is logged; with NATS away, it has no record)
        who = (connection.peer_pid, connection.peer_uid, None, None) if connection is not None \
            else (None, None, None, None)
        self._record_later(event_name.partition(":")[0], None, "refused", None, who,
                           event=event_name, detail=message)

    def _record_later(self, *args, **kwargs) -> None:
        """A record nothing waits for but `state:audit` (which waits for it on this node)."""
        task = asyncio.ensure_future(self._record_quietly(*args, **kwargs))
        self.records_pending.add(task)
        task.add_done_callback(self.records_pending.discard)

    async def _record_quietly(self, *args, **kwargs) -> None:
        try:
            await self.audit_log.record(*args, **kwargs)
        except KSIError as exc:
            log.warning("cluster_audit_record_lost", args=args[:3], error=exc.message)

    async def _audited(self, names, op: str, version, who) -> None:
        """A change's record, stored before the change is answered."""
        if self.audit_log is not None:
            await self.audit_log.record(names[0], names[1], op, version, who)

    # ---- the connection comes and goes (a ClusterListener) -----------------------------------

    async def cluster_up(self, js) -> None:
        """Open (or create) the bucket and rebuild the mirror from it: what changed while this
        node was away is announced as `state:changed`, then requests are served again."""
        kv = await open_bucket(js, self.bucket, self.replicas,
                               limit_marker_ttl=EXPIRY_MARKER_KEEP_S)
        if self.audit_log is not None:
            await self.audit_log.cluster_up(js)
        await self._stop_watching()
        watcher = await kv.watchall()
        live, seen, cleared_below = {}, {}, {}
        while True:
            entry = await watcher.updates(timeout=max(self.timeout_s, 10.0))
            if entry is None:  # the initial values are all in
                break
            _apply_to(live, seen, cleared_below, entry)
        self.js, self.kv, self.watcher = js, kv, watcher
        # A clear whose node died between its marker and its purge: purged now (idempotent).
        for namespace, marker in cleared_below.items():
            await self._purge_before(namespace, marker)
        changed = _differences(self.live, live)
        self.live, self.seen, self.cleared_below = live, seen, cleared_below
        self.by_namespace = {}
        for namespace, key in live:
            self.by_namespace.setdefault(namespace, set()).add(key)
        self.watching = asyncio.ensure_future(self._follow(watcher))
        self.serving = True
        if changed:
            self.announce_all("state:changed", changed)
        log.info("cluster_state_reconciled", bucket=self.bucket, keys=len(live),
                 changed=len(changed))

    def cluster_down(self) -> None:
        self.serving = False

    async def _stop_watching(self) -> None:
        if self.watching is not None:
            self.watching.cancel()
            self.watching = None
        if self.watcher is not None:
            watcher, self.watcher = self.watcher, None
            await let_go(watcher.stop(), self.timeout_s)

    async def _follow(self, watcher) -> None:
        """Every change made anywhere, in the bucket's order, into the mirror and announced."""
        async for entry in watcher:
            if entry is not None:
                self._take(entry)

    def _take(self, entry) -> None:
        names = state_key(entry.key)
        if names is None:
            namespace = cleared_namespace(entry.key)
            if namespace is not None and entry.operation not in ("DEL", "PURGE"):
                self._take_clear(namespace, entry)
            return
        if entry.revision <= self.seen.get(names, 0) or \
                entry.revision < self.cleared_below.get(names[0], 0):
            return
        self.seen[names] = entry.revision
        namespace, key = names
        if entry.operation in ("DEL", "PURGE"):
            old = self._forget(names)
            if old is not None:
                op = "delete" if entry.operation == "DEL" else "expire"
                self.announce_all("state:changed", [(None, {
                    "namespace": namespace, "key": key, "version": old[1], "op": op})])
                if op == "expire" and self.audit_log is not None:
                    # Every node sees the server's marker; the message id keeps one record.
                    self._record_later(namespace, key, "expire", old[1],
                                       (None, None, None, None),
                                       msg_id=f"expire.{entry.key}.{entry.revision}")
            return
        value_json, expires_at = kv_values.decode(entry.value)
        self._store(names, (value_json, entry.revision, expires_at))
        self.announce_all("state:changed", [(None, {
            "namespace": namespace, "key": key, "version": entry.revision, "op": "set"})])

    def _take_clear(self, namespace: str, entry) -> None:
        """A clear marker, from whichever node: every key of the namespace written before it
        goes. The watch brings the bucket in order, so the mirror holds all of them by now."""
        marker = entry.revision
        self.cleared_below[namespace] = max(marker, self.cleared_below.get(namespace, 0))
        gone = []
        for key in list(self.by_namespace.get(namespace, ())):
            old = self.live[(namespace, key)]
            if old[1] < marker:
                if self._live_entry((namespace, key)) is not None:
                    gone.append((key, old[1]))
                self._forget((namespace, key))
        try:
            clear_id = orjson.loads(entry.value).get("clear_id")
        except (orjson.JSONDecodeError, AttributeError):
            clear_id = None
        waiting = self.clears_waiting.pop(clear_id, None)
        if waiting is not None:  # this node's own clear: it announces one `clear` itself
            if not waiting.done():
                waiting.set_result(len(gone))
            return
        if gone:
            self.announce_all("state:changed", [(None, {
                "namespace": namespace, "key": key, "version": version, "op": "delete"})
                for key, version in gone])

    # ---- the mirror --------------------------------------------------------------------------

    def _store(self, names: tuple, entry: tuple) -> None:
        self.live[names] = entry
        self.by_namespace.setdefault(names[0], set()).add(names[1])

    def _forget(self, names: tuple) -> tuple | None:
        old = self.live.pop(names, None)
        if old is not None:
            keys = self.by_namespace.get(names[0])
            if keys is not None:
                keys.discard(names[1])
                if not keys:
                    del self.by_namespace[names[0]]
        return old

    def _live_entry(self, names: tuple) -> tuple | None:
        entry = self.live.get(names)
        if entry is not None and entry[2] is not None and entry[2] <= time.time():
            return None  # expired: absent, though the server's marker may not be here yet
        return entry

    def _check_serving(self) -> None:
        if not self.serving:
            raise unreachable(WHAT, self.node)

    # ---- order: what one connection sent before must take effect first ---------------------

    def _queue(self, names: tuple, work) -> asyncio.Task:
        task = asyncio.ensure_future(_after(self.tails.get(names) or self.barrier, work))
        self.tails[names] = task
        task.add_done_callback(lambda done: self.tails.get(names) is done
                               and self.tails.pop(names))
        return task

    def _waiting_before(self, names: tuple | None):
        """What a read must wait for: the writes of its key (None: every write) and a clear."""
        if names is not None:
            return self.tails.get(names) or self.barrier
        pending = list(self.tails.values())
        if self.barrier is not None:
            pending.append(self.barrier)
        return asyncio.gather(*pending, return_exceptions=True) if pending else None

    # ---- the events --------------------------------------------------------------------------

    def set(self, data: dict, ctx):
        self._check_serving()
        names = (data.get("namespace", GLOBAL), data["key"])
        ttl_s, if_version = data.get("ttl_s"), data.get("if_version")
        value_json = orjson.dumps(data["value"])
        expires_at = None if ttl_s is None else time.time() + ttl_s
        return self._queue(names, self._set(names, value_json, expires_at, ttl_s, if_version,
                                            _who(ctx)))

    async def _set(self, names, value_json, expires_at, ttl_s, if_version, who):
        self._check_serving()
        payload = kv_values.encode(value_json, expires_at)
        # Whole seconds on the server, rounded up: the mirror hides the key at `expires_at`.
        msg_ttl = None if ttl_s is None else max(1, math.ceil(ttl_s))
        if if_version is None:
            revision = await self._publish(names, payload, None, msg_ttl)
        elif if_version > 0:
            revision = await self._publish_if(names, payload, if_version, msg_ttl)
        else:
            revision = await self._create(names, payload, msg_ttl)
        if revision > self.seen.get(names, 0) and \
                revision > self.cleared_below.get(names[0], 0):
            self.seen[names] = revision
            self._store(names, (value_json, revision, expires_at))
        await self._audited(names, "set", revision, who)
        self._announce_after_reply(who[2], {
            "namespace": names[0], "key": names[1], "version": revision, "op": "set"})
        return {"namespace": names[0], "key": names[1], "version": revision}

    async def _publish_if(self, names, payload, if_version, msg_ttl) -> int:
        entry = self.live.get(names)
        if entry is not None and entry[1] == if_version and entry[2] is not None \
                and entry[2] <= time.time():
            raise self._conflict(names, if_version, None)  # expired: the version is gone
        try:
            return await self._publish(names, payload, if_version, msg_ttl)
        except WrongLastSequence:
            raise self._conflict(names, if_version, await self._current_version(names)) from None

    async def _create(self, names, payload, msg_ttl) -> int:
        """Write only if absent: absent on the server may still leave a message (a delete
        marker, or a value past its expiry not yet removed), whose revision the write names."""
        # Believed absent: over the last revision seen (a delete marker's, or 0); else the
        # server says what is there (the mirror may lag behind another node's delete).
        last = self.seen.get(names, 0) if names not in self.live \
            else await self._absent_revision(names)
        for _ in range(RETRIES_OF_A_RACE):
            if last is None:
                break
            try:
                return await self._publish(names, payload, last, msg_ttl)
            except WrongLastSequence:
                last = await self._absent_revision(names)
        raise self._conflict(names, 0, await self._current_version(names))

    async def _absent_revision(self, names) -> int | None:
        """The revision to write over if the key is absent (0: no message at all), None if it
        is there."""
        revision, absent = await self._server_entry(names)
        return revision if absent else None

    async def _current_version(self, names) -> int | None:
        revision, absent = await self._server_entry(names)
        return None if absent else revision

    async def _server_entry(self, names) -> tuple[int, bool]:
        """(revision of the key's last message, 0 if none; whether the key counts as absent)."""
        from nats.js.errors import KeyNotFoundError
        try:
            entry = await self._ask(self.kv.get(kv_key(*names)))
        except KeyNotFoundError as exc:
            return (exc.entry.revision if exc.entry is not None else 0), True
        _value, expires_at = kv_values.decode(entry.value or b"")
        return entry.revision, expires_at is not None and expires_at <= time.time()

    def _conflict(self, names, if_version, current) -> KSIError:
        return KSIError(CONFLICT, f"{names[0]}:{names[1]} is at version {current}, not "
                        f"{if_version}", details={"current_version": current})

    def get(self, data: dict):
        self._check_serving()
        names = (data.get("namespace", GLOBAL), data["key"])
        waiting = self._waiting_before(names)
        if waiting is not None:
            return asyncio.ensure_future(_after(waiting, self._answer_later(self._read, names)))
        return self._read(names)

    async def _answer_later(self, read, request):
        """A read that waited for the writes before it: the connection may be gone by now."""
        self._check_serving()
        return read(request)

    def _read(self, names) -> dict:
        entry = self._live_entry(names)
        if entry is None:
            return {"namespace": names[0], "key": names[1], "found": False, "value": None,
                    "version": None}
        return {"namespace": names[0], "key": names[1], "found": True,
                "value": orjson.loads(entry[0]), "version": entry[1]}

    def delete(self, data: dict, ctx):
        self._check_serving()
        names = (data.get("namespace", GLOBAL), data["key"])
        return self._queue(names, self._delete(names, _who(ctx)))

    async def _delete(self, names, who) -> dict:
        self._check_serving()
        for _ in range(RETRIES_OF_A_RACE):
            revision, absent = await self._server_entry(names)
            if absent:
                return {"deleted": False}
            try:
                marker = await self._publish(names, b"", revision, None, delete=True)
            except WrongLastSequence:
                continue  # written meanwhile elsewhere: delete what is there now
            if marker > self.seen.get(names, 0):
                self.seen[names] = marker
                self._forget(names)
            await self._audited(names, "delete", revision, who)
            self._announce_after_reply(who[2], {
                "namespace": names[0], "key": names[1], "version": revision, "op": "delete"})
            return {"deleted": True}
        raise KSIError(CONFLICT, f"{names[0]}:{names[1]} kept changing while being deleted")

    def list(self, data):
        self._check_serving()
        waiting = self._waiting_before(None)
        if waiting is not None:
            return asyncio.ensure_future(_after(waiting, self._answer_later(self._list, data)))
        return self._list(data)

    def _list(self, data) -> dict:
        namespace, prefix = data.namespace, data.prefix
        keys = sorted(key for key in self.by_namespace.get(namespace, ())
                      if key.startswith(prefix)
                      and self._live_entry((namespace, key)) is not None)[:data.limit]
        return {"keys": keys, "count": len(keys)}

    def clear(self, data, ctx):
        self._check_serving()
        barrier = asyncio.ensure_future(_after(self._waiting_before(None),
                                               self._clear(data.namespace, _who(ctx))))
        self.barrier = barrier
        barrier.add_done_callback(lambda done: self.barrier is done
                                  and setattr(self, "barrier", None))
        return barrier

    async def _clear(self, namespace, who) -> dict:
        """Clear the namespace for the whole cluster: a marker in the bucket, whose revision
        splits the bucket's order in two (every key of the namespace written before it goes,
        on every node, whenever its news arrives), then a purge of what came before it from
        the bucket's stream. `deleted` counts the live keys the marker removed."""
        self._check_serving()
        clear_id = os.urandom(8).hex()
        waiting = asyncio.get_running_loop().create_future()
        self.clears_waiting[clear_id] = waiting
        try:
            marker = await self._publish_marker(namespace, orjson.dumps(
                {"clear_id": clear_id, "node": self.node.node_id, "at": time.time()}))
            # The watch reaching the marker means the mirror held every key before it.
            deleted = await self._ask(asyncio.shield(waiting))
        finally:
            self.clears_waiting.pop(clear_id, None)
        await self._purge_before(namespace, marker)
        await self._audited((namespace, None), "clear", None, who)
        if deleted:
            self._announce_after_reply(who[2], {
                "namespace": namespace, "key": None, "version": None, "op": "clear",
                "deleted": deleted})
        return {"deleted": deleted}

    async def _publish_marker(self, namespace: str, payload: bytes) -> int:
        from nats.js.errors import APIError
        try:
            ack = await self._ask(self.js.publish(
                f"$KV.{self.bucket}.{clear_marker_key(namespace)}", payload,
                timeout=self.timeout_s))
        except APIError as exc:
            raise KSIError(UNAVAILABLE, f"JetStream refused the clear: {exc}") from None
        return ack.seq

    async def _purge_before(self, namespace: str, marker: int) -> None:
        """Remove the namespace's messages older than its clear marker from the stream."""
        from nats.js.errors import APIError
        try:
            await self._ask(self.js.purge_stream(
                f"KV_{self.bucket}", seq=marker,
                subject=f"$KV.{self.bucket}.{namespace_filter(namespace)}"))
        except APIError as exc:
            # Every node already hides those keys (the marker); a later start purges again.
            log.warning("cluster_state_purge_refused", namespace=namespace, error=str(exc))

    def audit(self, data):
        """The audit stream's newest records, behind this node's writes and refusals sent
        before (one connection is one ordered stream), on the server: any node's records."""
        if self.audit_log is None:
            return {"enabled": False, "entries": [], "count": 0}
        self._check_serving()
        return asyncio.ensure_future(self._audit(data, self._waiting_before(None),
                                                 list(self.records_pending)))

    async def _audit(self, data, writes, refusals) -> dict:
        pending = [asyncio.ensure_future(w) for w in (writes,) if w is not None] + refusals
        if pending:
            await asyncio.wait(pending)
        self._check_serving()
        entries = await self.audit_log.entries(data.namespace, data.key, data.limit)
        return {"enabled": True, "entries": entries, "count": len(entries)}

    # ---- talking to NATS ---------------------------------------------------------------------

    async def _publish(self, names, payload: bytes, last: int | None, msg_ttl, *,
                       delete: bool = False) -> int:
        """Publish one message on the key's subject; its revision once JetStream stored it."""
        return await publish_key(self.js, self.bucket, kv_key(*names), payload, last,
                                 timeout_s=self.timeout_s, what=WHAT,
                                 nats_url=self.node.nats_url, ttl=msg_ttl, delete=delete)

    async def _ask(self, request):
        """Await one request to NATS, bounded: anything but an answer is `unavailable`."""
        return await ask(request, self.timeout_s, WHAT, self.node.nats_url)

    def _announce_after_reply(self, correlation_id, data: dict) -> None:
        """`state:changed` follows the write's reply (PROTOCOL.md §1): the reply is written by
        the task's done callback, scheduled when this coroutine returns, so the announcement
        goes one loop turn later than a plain call_soon would."""
        loop = asyncio.get_running_loop()
        loop.call_soon(loop.call_soon, self.announce_all, "state:changed",
                       [(correlation_id, data)])


def _who(ctx) -> tuple:
    """Who asked, for the audit: (peer_pid, peer_uid, correlation_id, agent_id)."""
    connection = ctx.connection  # None for an event a plugin emitted
    if connection is None:
        return None, None, ctx.correlation_id, ctx.agent_id
    return connection.peer_pid, connection.peer_uid, ctx.correlation_id, ctx.agent_id


async def _after(waiting, work):
    """Run `work` once what it must follow has finished, whatever that ended in."""
    if waiting is not None:
        await asyncio.wait([asyncio.ensure_future(waiting)])
    return await work


def _apply_to(live: dict, seen: dict, cleared_below: dict, entry) -> None:
    """One entry of the bucket's initial values (in revision order) into a new mirror."""
    names = state_key(entry.key)
    if names is None:
        namespace = cleared_namespace(entry.key)
        if namespace is not None and entry.operation not in ("DEL", "PURGE"):
            cleared_below[namespace] = entry.revision
            for gone in [n for n, e in live.items() if n[0] == namespace
                         and e[1] < entry.revision]:
                del live[gone]
        return
    seen[names] = entry.revision
    if entry.operation in ("DEL", "PURGE"):
        live.pop(names, None)
    else:
        value_json, expires_at = kv_values.decode(entry.value)
        live[names] = (value_json, entry.revision, expires_at)


def _differences(before: dict, after: dict) -> list:
    """`state:changed` for what a rebuilt mirror holds differently from the one before."""
    changed = []
    for names, entry in after.items():
        old = before.get(names)
        if old is None or old[1] != entry[1]:
            changed.append((None, {"namespace": names[0], "key": names[1],
                                   "version": entry[1], "op": "set"}))
    for names, old in before.items():
        if names not in after:
            changed.append((None, {"namespace": names[0], "key": names[1],
                                   "version": old[1], "op": "delete"}))
    return changed
