"""Agents' homes in cluster mode: one lease per agent in KV, and the live nodes.

The bucket `ksi_leases` (cluster.lease_bucket) holds two kinds of keys:

    lease.<agent>  {"node", "holder", "renewed_at"}  who runs the agent; a per-message TTL of
                   lease_ttl_s, renewed by compare-and-set on its revision
    node.<node>    {"node_id", "pid", "heartbeat_at", "leases"}  a node alive (TTL)

The agents' checkpoints are the agent plugin's shared store (kv_agents.py, bucket
cluster.agent_bucket), which this module only watches: with the leases it makes the directory
(`agent:list` on any node) and shows which agents have no lease. A node that cannot renew a
lease stops that agent by its own clock before the server can let the lease expire (FENCE_AT
of the TTL, counted from when the renewal was sent, which is before the server stored it). A
node that sees a checkpoint without a lease races the others to create the lease, and the one
that wins resumes the agent, whose first checkpoint write names the revision it read: every
later write of the old home names an older one and is refused, and that node stops the agent
(docs/CLUSTER.md, "The lease protocol").
"""
from __future__ import annotations

import asyncio
import math
import os
import time
from collections import OrderedDict

import orjson
import structlog

from ...protocol import CONFLICT, HANDLER_ERROR, TIMEOUT, UNAVAILABLE, KSIError
from .bounded import ask
from .kv_keys import escape, unescape
from .kv_writes import WrongLastSequence, open_bucket, publish_key

RENEW_EVERY = 0.25  # of the TTL
FENCE_AT = 0.75     # of the TTL since the last renewal was sent: stop the agent here
SWEEP_EVERY = 0.5   # of the TTL: look for agents whose lease is gone
CHECK_EVERY = 0.05  # of the TTL: how often the fence is checked (no I/O)
# Of the TTL without a word from a node (a lease renewed, its heartbeat): by then it has stopped
# its agents by its own clock (FENCE_AT), so a request waiting for it is told so.
SILENT_AFTER = FENCE_AT
# Forwarded requests whose reply is pushed later (agent:send without wait): where each push
# goes on this node. One that never comes (the message was skipped) is forgotten past this.
MAX_PUSH_ROUTES = 10_000
TAKEN = b"taken"
RETRIES_OF_A_RACE = 3
EXPIRY_MARKER_KEEP_S = 60.0
WHAT = "the cluster's agent leases"
DIRECTORY_KEYS = ("agent_id", "profile", "status", "created_at", "session_id",
                  "messages_handled")
log = structlog.get_logger("ksi.plugin.cluster")


def agent_subject(node_id: str) -> str:
    """Where a node's agent plugin answers requests forwarded by the other nodes."""
    return f"ksi.node.{node_id}.agent"


def push_subject(node_id: str) -> str:
    """Where a node takes the pushes meant for the clients whose requests it forwarded."""
    return f"ksi.node.{node_id}.push"


class Held:
    """A lease this node holds: the revision it wrote last, and when that renewal was sent."""
    __slots__ = ("holder", "lease_rev", "renewed_at")

    def __init__(self, holder: str, lease_rev: int, renewed_at: float):
        self.holder, self.lease_rev, self.renewed_at = holder, lease_rev, renewed_at


class AgentLeases:
    """The cluster plugin's `AgentCluster` (ksi_daemon/plugins/agent/cluster_seam.py)."""

    def __init__(self, node, settings: dict):
        self.node, self.node_id = node, node.node_id
        self.bucket, self.replicas = settings["lease_bucket"], settings["replicas"]
        self.checkpoint_bucket = settings["agent_bucket"]
        self.ttl_s, self.timeout_s = settings["lease_ttl_s"], settings["request_timeout_s"]
        self.held: dict[str, Held] = {}
        self.agents: dict[str, dict] = {}  # agent -> its agents row, from its checkpoint
        self.leases: dict[str, dict] = {}  # agent -> lease record, as last heard
        self.last_home: dict[str, str] = {}  # agent -> the node that held its last lease
        self.nodes: dict[str, dict] = {}   # node -> its heartbeat record
        self.heard_at: dict[str, float] = {}  # node -> when its last lease or heartbeat came
        self.push_routes: OrderedDict[str, object] = OrderedDict()  # token -> pushes
        self.seen: dict[str, int] = {}     # KV key -> newest revision heard
        self.adopting: set[str] = set()
        self.here = None
        self.serving = False
        self.closing = False  # stopping: adopt nothing more
        self.js = self.kv = self.subscription = self.push_subscription = None
        self.watchers: list = []
        self.watching: list[asyncio.Task] = []
        self.answering: set[asyncio.Task] = set()
        self.sweep_soon: asyncio.Event | None = None
        node.listen(self)

    # ---- the AgentCluster seam ---------------------------------------------------------------

    def open(self, here) -> None:
        self.here = here

    def home_of(self, agent_id: str) -> str | None:
        lease = self.leases.get(agent_id)
        if lease is not None:
            return lease["node"]
        return self.last_home.get(agent_id) if agent_id in self.agents else None

    def resuming(self, agent_id: str) -> bool:
        return agent_id in self.adopting and agent_id in self.held

    @property
    def lease_ttl_s(self) -> float:
        return self.ttl_s

    def directory(self) -> list[dict]:
        return [{**row, "node": self.leases[agent_id]["node"] if agent_id in self.leases
                 else None} for agent_id, row in self.agents.items()]

    async def claim(self, agent_id: str) -> None:
        self._check_serving()
        holder, sent = os.urandom(8).hex(), time.monotonic()
        lease_rev = await self._create(f"lease.{escape(agent_id)}", self._lease(holder),
                                       self._lease_ttl())
        if lease_rev is None:
            home = self.home_of(agent_id)
            raise KSIError(CONFLICT, f"agent {agent_id} already exists in the cluster (on node "
                           f"{home})", {"agent_id": agent_id, "node": home})
        self.held[agent_id] = Held(holder, lease_rev, sent)

    async def release(self, agent_id: str) -> None:
        # Not held from here on: the watch brings the delete back, perhaps before its ack.
        held = self.held.pop(agent_id, None)
        if held is None:
            return
        try:
            await self._delete(f"lease.{escape(agent_id)}", held.lease_rev)
        except KSIError as exc:  # it expires on its own within the TTL
            log.info("cluster_lease_not_released", agent_id=agent_id, error=exc.message)

    async def forward(self, node_id: str, event: str, data: dict, correlation_id, timeout_s,
                      pushes=None):
        self._check_serving()
        request = {"event": event, "data": data, "correlation_id": correlation_id}
        if pushes is None:
            return await self._ask_node(node_id, request, timeout_s)
        token = self._route_pushes(pushes)
        request["push_to"] = {"node": self.node_id, "token": token}
        try:
            return await self._ask_node(node_id, request, timeout_s)
        except KSIError:
            self.push_routes.pop(token, None)
            raise

    async def _ask_node(self, node_id: str, request: dict, timeout_s: float) -> dict:
        import nats.errors
        event = request["event"]
        try:
            asking = self.node.nc.request(agent_subject(node_id), orjson.dumps(request),
                                          timeout=timeout_s)
            answer = await self._answer_unless_silent(node_id, request["data"].get("agent_id"),
                                                      asking)
        except nats.errors.NoRespondersError:
            raise KSIError(UNAVAILABLE, f"node {node_id}, where the agent runs, does not answer "
                           f"(stopped or cut off from NATS); its agents move to another node "
                           f"within about {self.ttl_s:g} s",
                           self._retry_details(node_id, request["data"].get("agent_id"))
                           ) from None
        except nats.errors.TimeoutError:
            raise KSIError(TIMEOUT, f"node {node_id} did not answer {event} within "
                           f"{timeout_s:g} s") from None
        except (nats.errors.Error, OSError) as exc:
            raise KSIError(UNAVAILABLE, f"cannot reach node {node_id}: {exc!r}") from None
        reply = orjson.loads(answer.data)
        if "error" in reply:
            error = reply["error"]
            raise KSIError(error["code"], error["message"], error.get("details"))
        return reply["data"]

    async def _answer_unless_silent(self, node_id: str, agent_id, request):
        """The answer to `request`, or `unavailable` once `node_id` has been silent for
        SILENT_AFTER of the TTL: a node cut off from NATS by a network that drops its bytes is
        still subscribed as far as the server knows, so NATS never says nobody answers."""
        if self._silent(node_id):
            request.close()
            raise self._silent_home(node_id, agent_id)
        asking = asyncio.ensure_future(request)
        try:
            while True:
                done, _ = await asyncio.wait({asking}, timeout=self.ttl_s * CHECK_EVERY)
                if done:
                    return asking.result()
                if self._silent(node_id):
                    raise self._silent_home(node_id, agent_id)
        finally:
            asking.cancel()

    def _silent(self, node_id: str) -> bool:
        heard = self.heard_at.get(node_id)
        return heard is not None and time.monotonic() - heard > self.ttl_s * SILENT_AFTER

    def _silent_home(self, node_id: str, agent_id) -> KSIError:
        quiet_s = time.monotonic() - self.heard_at[node_id]
        return KSIError(UNAVAILABLE, f"node {node_id}, where agent {agent_id} runs, has not "
                        f"been heard from for {quiet_s:.1f} s (cut off from NATS, stopped or "
                        f"stalled): it has stopped its agents by now, and they resume on "
                        f"another node once their leases expire",
                        self._retry_details(node_id, agent_id))

    def _retry_details(self, node_id: str, agent_id) -> dict:
        """When to try again: once the node's leases, as last heard here, have expired (the
        server may take a moment more to remove them)."""
        heard = self.heard_at.get(node_id)
        left = self.ttl_s if heard is None else heard + self._lease_ttl() - time.monotonic()
        return {"agent_id": agent_id, "node": node_id, "retry_after_s": round(max(0.5, left), 1)}

    def _route_pushes(self, pushes) -> str:
        token = os.urandom(8).hex()
        self.push_routes[token] = pushes
        while len(self.push_routes) > MAX_PUSH_ROUTES:
            self.push_routes.popitem(last=False)
        return token

    def health(self) -> dict:
        return {"lease_ttl_s": self.ttl_s, "leases": sorted(self.held),
                "agents": len(self.agents),
                "nodes": sorted(self.nodes.values(), key=lambda n: n["node_id"])}

    # ---- the connection comes and goes (a ClusterListener) -----------------------------------

    async def cluster_up(self, js) -> None:
        kv = await open_bucket(js, self.bucket, self.replicas,
                               limit_marker_ttl=EXPIRY_MARKER_KEEP_S)
        if self.subscription is None:  # nats-py subscribes it again after a reconnection
            self.subscription = await self.node.nc.subscribe(agent_subject(self.node_id),
                                                             cb=self._on_request)
            self.push_subscription = await self.node.nc.subscribe(push_subject(self.node_id),
                                                                  cb=self._on_push)
        await self._stop_watching()
        self.agents, self.leases, self.nodes, self.seen = {}, {}, {}, {}
        self.js, self.kv = js, kv
        # The checkpoints' bucket is the agent store's (kv_agents.py): it listens before us,
        # so the bucket exists by now.
        checkpoints = await js.key_value(self.checkpoint_bucket)
        for bucket, take in ((kv, self._take), (checkpoints, self._take_checkpoint)):
            watcher = await bucket.watchall()
            self.watchers.append(watcher)
            while True:
                entry = await watcher.updates(timeout=max(self.timeout_s, 10.0))
                if entry is None:
                    break
                take(entry)
            self.watching.append(asyncio.ensure_future(self._follow(watcher, take)))
        self.serving = True
        self._sweep_soon()

    def cluster_down(self) -> None:
        self.serving = False

    async def close(self) -> None:
        """A node stopping: the agent plugin has stopped its agents by now (it shuts down
        before this plugin), so their leases are handed back for another node to resume them
        at once rather than after the TTL. Their checkpoints stay."""
        self.closing = True
        held, self.held = self.held, {}
        if self.serving and held:
            await asyncio.gather(*(self._delete(f"lease.{escape(agent_id)}", h.lease_rev)
                                   for agent_id, h in held.items()), return_exceptions=True)
        self.serving = False
        await self._stop_watching()

    async def _stop_watching(self) -> None:
        for task in self.watching:
            task.cancel()
        watchers, self.watchers, self.watching = self.watchers, [], []
        for watcher in watchers:
            try:
                await asyncio.wait_for(watcher.stop(), self.timeout_s)
            except Exception:  # noqa: BLE001 - its connection may be gone
                pass

    # ---- the mirror --------------------------------------------------------------------------

    async def _follow(self, watcher, take) -> None:
        async for entry in watcher:
            if entry is not None:
                take(entry)

    def _take_checkpoint(self, entry) -> None:
        """An agent's checkpoint as the agent store wrote it: the directory's row."""
        agent_id = unescape(entry.key)
        if entry.operation in ("DEL", "PURGE") or not entry.value:
            self.agents.pop(agent_id, None)
            return
        row = orjson.loads(entry.value)["agent"]
        if row["status"] == "terminated":
            self.agents.pop(agent_id, None)
            return
        self.agents[agent_id] = {key: row[key] for key in DIRECTORY_KEYS}
        if agent_id not in self.leases:
            self._sweep_soon()

    def _take(self, entry) -> None:
        if entry.revision <= self.seen.get(entry.key, 0):
            return
        self.seen[entry.key] = entry.revision
        kind, _, name = entry.key.partition(".")
        name = unescape(name)
        gone = entry.operation in ("DEL", "PURGE")
        record = None if gone else orjson.loads(entry.value)
        if kind == "node":
            self.nodes.pop(name, None) if gone else self.nodes.__setitem__(name, record)
        elif kind == "lease":
            self._lease_heard(name, record)
        if record is not None:
            self.heard_at[record.get("node_id") or record["node"]] = time.monotonic()

    def _lease_heard(self, agent_id: str, record: dict | None) -> None:
        held = self.held.get(agent_id)
        if record is None:
            self.leases.pop(agent_id, None)
            if held is not None:  # the server let it expire: we were too slow to renew
                self._lose(agent_id, "its lease expired before this node renewed it")
            self._sweep_soon()
            return
        self.leases[agent_id] = record
        self.last_home[agent_id] = record["node"]
        if held is not None and record.get("holder") != held.holder:
            self._lose(agent_id, f"node {record['node']} has taken its lease")

    # ---- keeping leases: renew, fence, adopt ------------------------------------------------

    def services(self) -> list:
        self.sweep_soon = asyncio.Event()
        return [self._renew_loop(), self._sweep_loop(), self._fence_loop()]

    async def _renew_loop(self) -> None:
        while True:
            await asyncio.sleep(self.ttl_s * RENEW_EVERY)
            await self._quietly(self._renew_all)

    async def _sweep_loop(self) -> None:
        while True:
            try:  # at once when a lease goes, else now and then (a node that just came up)
                await asyncio.wait_for(self.sweep_soon.wait(), self.ttl_s * SWEEP_EVERY)
            except asyncio.TimeoutError:
                pass
            self.sweep_soon.clear()
            await self._quietly(self._sweep)

    async def _quietly(self, work) -> None:
        if not self.serving:
            return
        try:
            await work()
        except Exception as exc:  # noqa: BLE001 - the next round tries again
            log.warning("cluster_lease_work_failed", work=work.__name__, error=repr(exc))

    def _sweep_soon(self) -> None:
        if self.sweep_soon is not None:
            self.sweep_soon.set()

    async def _fence_loop(self) -> None:
        while True:
            await asyncio.sleep(self.ttl_s * CHECK_EVERY)
            limit = time.monotonic() - self.ttl_s * FENCE_AT
            for agent_id, held in list(self.held.items()):
                if held.renewed_at < limit:
                    self._lose(agent_id, f"its lease could not be renewed for "
                                         f"{FENCE_AT * self.ttl_s:.1f} s (NATS unreachable)")

    async def _renew_all(self) -> None:
        await asyncio.gather(self._heartbeat(),
                             *(self._renew(agent_id, held)
                               for agent_id, held in list(self.held.items())))

    async def _heartbeat(self) -> None:
        record = {"node_id": self.node_id, "pid": os.getpid(), "heartbeat_at": time.time(),
                  "leases": len(self.held)}
        try:
            await self._publish(f"node.{escape(self.node_id)}", orjson.dumps(record), None,
                                ttl=max(2, math.ceil(self.ttl_s * 2)))
        except KSIError as exc:
            log.info("cluster_heartbeat_failed", error=exc.message)

    async def _renew(self, agent_id: str, held: Held) -> None:
        sent = time.monotonic()
        try:
            revision = await self._publish(f"lease.{escape(agent_id)}", self._lease(held.holder),
                                           held.lease_rev, ttl=self._lease_ttl())
        except WrongLastSequence:
            await self._renewal_refused(agent_id, held)
            return
        except KSIError:
            return  # unreachable: the fence stops the agent if this lasts
        if self.held.get(agent_id) is held:
            held.lease_rev, held.renewed_at = max(held.lease_rev, revision), sent

    async def _renewal_refused(self, agent_id: str, held: Held) -> None:
        """The lease is not at the revision we wrote: our last renewal may have been stored
        with its ack lost, or someone else holds it now."""
        try:
            entry, _absent_at = await self._server_entry(f"lease.{escape(agent_id)}")
        except KSIError:
            return
        if entry is not None and orjson.loads(entry.value).get("holder") == held.holder:
            held.lease_rev = entry.revision  # ours: renew over it next time
            return
        holder = orjson.loads(entry.value)["node"] if entry is not None else None
        self._lose(agent_id, f"node {holder} has taken its lease" if holder
                   else "its lease expired before this node renewed it")

    def _lose(self, agent_id: str, why: str) -> None:
        if self.held.pop(agent_id, None) is None:
            return
        log.warning("cluster_lease_lost", agent_id=agent_id, node_id=self.node_id, reason=why)
        if self.here is not None:
            self.here.give_up(agent_id, why)

    async def _sweep(self) -> None:
        """Resume the agents whose lease is gone (their node died or was cut off)."""
        if self.closing:
            return
        orphans = [agent_id for agent_id in self.agents
                   if agent_id not in self.leases and agent_id not in self.held
                   and agent_id not in self.adopting]
        for agent_id in orphans:
            await self._adopt(agent_id)

    async def _adopt(self, agent_id: str) -> None:
        if self.closing:
            return
        self.adopting.add(agent_id)
        lease_key = f"lease.{escape(agent_id)}"
        try:
            holder, sent = os.urandom(8).hex(), time.monotonic()
            lease_rev = await self._create(lease_key, self._lease(holder), self._lease_ttl())
            if lease_rev is None:
                return  # another node was quicker
            previous = self.last_home.get(agent_id)
            held = self.held[agent_id] = Held(holder, lease_rev, sent)
            try:
                await self.here.adopt(agent_id)
            except Exception as exc:  # noqa: BLE001 - let another node (or a later sweep) try
                log.warning("cluster_agent_not_resumed", agent_id=agent_id, error=repr(exc))
                if self.held.get(agent_id) is held:
                    del self.held[agent_id]
                    await self._delete(lease_key, held.lease_rev)
                return
            log.info("cluster_agent_adopted", agent_id=agent_id, node_id=self.node_id,
                     previous=previous)
        except KSIError as exc:
            log.info("cluster_adoption_failed", agent_id=agent_id, error=exc.message)
        finally:
            self.adopting.discard(agent_id)

    # ---- requests forwarded to this node ----------------------------------------------------

    async def _on_request(self, msg) -> None:
        task = asyncio.ensure_future(self._answer(msg))
        self.answering.add(task)
        task.add_done_callback(self.answering.discard)

    async def _answer(self, msg) -> None:
        try:
            request = orjson.loads(msg.data)
            asker = request.get("push_to")
            data = await self.here.answer_forwarded(
                request["event"], request.get("data") or {}, request.get("correlation_id"),
                self._pushes_back_to(asker) if asker else None)
            reply = {"data": data}
        except KSIError as exc:
            reply = {"error": {"code": exc.code, "message": exc.message,
                               "details": exc.details}}
        except Exception as exc:  # noqa: BLE001 - the asking node gets a coded error
            log.error("cluster_forwarded_request_failed", error=repr(exc), exc_info=exc)
            reply = {"error": {"code": HANDLER_ERROR, "message": f"{type(exc).__name__}: {exc}"}}
        try:
            await msg.respond(orjson.dumps(reply))
        except Exception as exc:  # noqa: BLE001 - the asker has given up, or NATS is gone
            log.info("cluster_forwarded_reply_lost", error=repr(exc))

    def _pushes_back_to(self, asker: dict):
        async def push_back(event: str, data) -> bool:
            payload = orjson.dumps({"token": asker["token"], "event": event, "data": data})
            try:
                answer = await self.node.nc.request(push_subject(asker["node"]), payload,
                                                    timeout=self.timeout_s)
            except Exception as exc:  # noqa: BLE001 - the caller raises the push here instead
                log.info("cluster_push_not_taken", node=asker["node"], error=repr(exc))
                return False
            return answer.data == TAKEN
        return push_back

    async def _on_push(self, msg) -> None:
        """A push for a client whose request this node forwarded: raised here, its node."""
        taken = False
        try:
            push = orjson.loads(msg.data)
            pushes = self.push_routes.pop(push["token"], None)
            if pushes is not None:
                pushes(push["event"], push["data"])
                taken = True
        except Exception as exc:  # noqa: BLE001 - the home node raises it instead
            log.warning("cluster_push_failed", error=repr(exc))
        try:
            await msg.respond(TAKEN if taken else b"")
        except Exception as exc:  # noqa: BLE001 - the home gives up waiting; it is here anyway
            log.info("cluster_push_ack_lost", error=repr(exc))

    # ---- talking to NATS ---------------------------------------------------------------------

    def _check_serving(self) -> None:
        if not self.serving:
            raise KSIError(UNAVAILABLE, f"the cluster is unreachable (NATS at "
                           f"{self.node.nats_url}: {self.node.last_error or 'reconnecting'})")

    def _holding(self, agent_id: str) -> Held:
        held = self.held.get(agent_id)
        if held is None:
            raise KSIError(UNAVAILABLE, f"agent {agent_id} no longer runs on node "
                                        f"{self.node_id}")
        return held

    def _lease(self, holder: str) -> bytes:
        return orjson.dumps({"node": self.node_id, "holder": holder, "renewed_at": time.time()})

    def _lease_ttl(self) -> int:
        return max(1, math.ceil(self.ttl_s))  # whole seconds on the server

    async def _create(self, key: str, payload: bytes, ttl: int | None) -> int | None:
        """Write `key` only if absent; its revision, or None if it is there."""
        for _ in range(RETRIES_OF_A_RACE):
            entry, absent_at = await self._server_entry(key)
            if entry is not None:
                return None
            try:
                return await self._publish(key, payload, absent_at, ttl=ttl)
            except WrongLastSequence:
                continue
        return None

    async def _delete(self, key: str, revision: int) -> None:
        try:
            await self._publish(key, b"", revision, delete=True)
        except WrongLastSequence:
            pass  # not ours any more

    async def _server_entry(self, key: str):
        """(the live entry or None, the revision a create must name when it is absent)."""
        from nats.js.errors import KeyNotFoundError
        self._check_serving()
        try:
            entry = await self._ask(self.kv.get(key))
        except KeyNotFoundError as exc:
            return None, (exc.entry.revision if exc.entry is not None else 0)
        if not entry.value:
            # The marker the server puts where a TTL removed a lease: nats-py's get returns it
            # as a value (only its watch reads the marker's header). Every record is JSON.
            return None, entry.revision
        return entry, None

    async def _publish(self, key: str, payload: bytes, last: int | None, *,
                       ttl: int | None = None, delete: bool = False) -> int:
        self._check_serving()
        return await publish_key(self.js, self.bucket, key, payload, last,
                                 timeout_s=self.timeout_s, what=WHAT,
                                 nats_url=self.node.nats_url, ttl=ttl, delete=delete)

    async def _ask(self, request):
        return await ask(request, self.timeout_s, WHAT, self.node.nats_url)
