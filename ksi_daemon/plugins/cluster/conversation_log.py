"""The conversation events' store in cluster mode: one JetStream stream of turns.

Each `conversation:append_turn` (or `append`) is one message on the subject
`<stream>.<escaped session_id>` of the stream `KSI_CONVERSATIONS`: a turn is stored whole or not
at all, and the stream's order is the one order of every turn. A write is answered after
JetStream acknowledged it and after this node's copy holds it, so the writing node reads its
writes at once.

Every node keeps a local copy (the conversation plugin's SQLite store, opened for us through
the seam: conversation/store_seam.py, LocalCopy), filled by an ordered consumer of the whole
stream, so list, get, history, search and export answer as on a single daemon. A message's id
is `<stream sequence> * 1000 + <its index in the turn>` and its time the writing node's, the
same on every node. Before a read, the node asks the stream for its last sequence and waits
until its copy holds everything up to it: a read on any node sees every turn acknowledged
anywhere before the read began (one round trip to NATS per read).
"""
from __future__ import annotations

import asyncio
import time

import orjson
import structlog

from ...protocol import PAYLOAD_TOO_LARGE, UNAVAILABLE, KSIError
from .bounded import ask, let_go, unreachable
from .kv_keys import escape

ID_SPACING = 1000  # message ids per stream message: a turn holds at most 256 messages
CATCH_UP_AT_LEAST_S = 10.0  # a read waits this long at most for the copy to catch up
WHAT = "the cluster's conversation store"
log = structlog.get_logger("ksi.plugin.cluster")


class JetStreamConversations:
    """A ConversationStore (conversation/store_seam.py) on the stream `stream`."""

    def __init__(self, node, local, stream: str, replicas: int, timeout_s: float):
        self.node, self.local = node, local
        self.stream, self.replicas, self.timeout_s = stream, replicas, timeout_s
        self.js = None
        self.serving = False
        self.follower = None  # the subscription feeding the local copy
        self.applied_through = 0  # every stream message up to this one is in the local copy
        self.catching_up: list[tuple[int, asyncio.Future]] = []
        self.tails: dict[str, asyncio.Future] = {}  # the last write queued of each session
        self.stream_created = None

    # ---- the store's lifecycle ---------------------------------------------------------------

    async def open(self) -> None:
        await self.local.open()
        self.node.listen(self)

    async def close(self) -> None:
        self.serving = False
        await self._stop_following()
        await self.local.close()

    # ---- the connection comes and goes (a ClusterListener) -----------------------------------

    async def cluster_up(self, js) -> None:
        """Open (or create) the stream, then follow it from the first turn the copy lacks."""
        from nats.js.api import ConsumerConfig, DeliverPolicy, StorageType, StreamConfig
        from nats.js.errors import NotFoundError
        try:
            info = await js.stream_info(self.stream)
        except NotFoundError:
            info = await js.add_stream(StreamConfig(
                name=self.stream, subjects=[f"{self.stream}.>"], storage=StorageType.FILE,
                num_replicas=self.replicas, allow_direct=True))
        if self.stream_created is not None and info.created != self.stream_created:
            log.error("conversation_stream_replaced", stream=self.stream,
                      detail="the stream was created anew; this node's copy keeps what it had")
        self.stream_created = info.created
        await self._stop_following()
        self.follower = await js.subscribe(
            f"{self.stream}.>", stream=self.stream, ordered_consumer=True, cb=self._take,
            config=ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                                  opt_start_seq=self.applied_through + 1))
        self.js = js
        self.serving = True
        log.info("cluster_conversations_following", stream=self.stream,
                 from_seq=self.applied_through + 1, last_seq=info.state.last_seq)

    def cluster_down(self) -> None:
        self.serving = False

    async def _stop_following(self) -> None:
        if self.follower is not None:
            follower, self.follower = self.follower, None
            await let_go(follower.unsubscribe(), self.timeout_s)

    async def _take(self, msg) -> None:
        """A turn from the stream, in the stream's order, into the local copy."""
        seq = msg.metadata.sequence.stream
        if seq <= self.applied_through:
            return
        try:
            turn = orjson.loads(msg.data)
            applied = self.local.apply_turn(seq * ID_SPACING, turn["session_id"],
                                            turn["messages"], turn["at"])
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            log.error("conversation_turn_unreadable", seq=seq, error=repr(exc))
            self._applied(seq)
            return
        except KSIError as exc:  # the copy is stopping
            log.warning("conversation_turn_not_applied", seq=seq, error=exc.message)
            return
        applied.add_done_callback(lambda done: self._applied_or_logged(seq, done))

    def _applied_or_logged(self, seq: int, done: asyncio.Future) -> None:
        if done.cancelled() or done.exception() is not None:
            # Reads then wait for it in vain and answer `unavailable`: the copy is broken.
            log.error("conversation_turn_not_applied", seq=seq,
                      error=repr(None if done.cancelled() else done.exception()))
            return
        self._applied(seq)

    def _applied(self, seq: int) -> None:
        self.applied_through = max(self.applied_through, seq)
        still = []
        for wanted, waiter in self.catching_up:
            if wanted <= self.applied_through:
                if not waiter.done():
                    waiter.set_result(None)
            else:
                still.append((wanted, waiter))
        self.catching_up = still

    def _check_serving(self) -> None:
        if not self.serving:
            raise unreachable(WHAT, self.node)

    # ---- writes ------------------------------------------------------------------------------

    def append(self, data):
        message = data.model_dump(exclude={"session_id"}, exclude_none=True)
        written = self._queue(data.session_id, [message])
        return _shaped(written, lambda reply: {"session_id": reply["session_id"],
                                               "message_id": reply["message_ids"][0],
                                               "timestamp": reply["timestamp"]})

    def append_turn(self, data):
        messages = [message.model_dump(exclude_none=True) for message in data.messages]
        return self._queue(data.session_id, messages)

    def _queue(self, session_id: str, messages: list[dict]) -> asyncio.Future:
        """One connection's writes of a session are stored in the order they arrived."""
        self._check_serving()
        task = asyncio.ensure_future(_after(self.tails.get(session_id),
                                            self._write(session_id, messages)))
        self.tails[session_id] = task
        task.add_done_callback(lambda done: self.tails.get(session_id) is done
                               and self.tails.pop(session_id))
        return task

    async def _write(self, session_id: str, messages: list[dict]) -> dict:
        import nats.errors
        from nats.js.errors import APIError
        self._check_serving()
        at = time.time()
        payload = orjson.dumps({"session_id": session_id, "at": at, "messages": messages})
        try:
            ack = await ask(self.js.publish(f"{self.stream}.{escape(session_id)}", payload,
                                            timeout=self.timeout_s),
                            self.timeout_s, WHAT, self.node.nats_url)
        except nats.errors.MaxPayloadError:
            raise KSIError(PAYLOAD_TOO_LARGE, f"the turn is {len(payload)} bytes, more than the "
                           "NATS server's max_payload") from None
        except APIError as exc:
            raise KSIError(UNAVAILABLE, f"JetStream refused the turn: {exc}") from None
        # Read-your-writes: in this node's copy before the reply (the consumer brings it back
        # later, and apply_turn stores it once).
        return await self.local.apply_turn(ack.seq * ID_SPACING, session_id, messages, at)

    # ---- reads: after the copy caught up with the stream ------------------------------------

    def history(self, data):
        return self._read(self.local.history, data, data.session_id)

    def list(self, data):
        return self._read(self.local.list, data, None)

    def get(self, data):
        return self._read(self.local.get, data, data.session_id)

    def search(self, data):
        return self._read(self.local.search, data, data.session_id)

    def export(self, data):
        return self._read(self.local.export, data, data.session_id)

    def _read(self, read, data, session_id: str | None) -> asyncio.Future:
        self._check_serving()
        pending = [self.tails[session_id]] if session_id in self.tails else \
            list(self.tails.values()) if session_id is None else []
        return asyncio.ensure_future(self._read_caught_up(read, data, pending))

    async def _read_caught_up(self, read, data, pending: list) -> dict:
        if pending:  # this connection's writes sent before the read
            await asyncio.wait(pending)
        self._check_serving()
        info = await ask(self.js.stream_info(self.stream), self.timeout_s, WHAT,
                         self.node.nats_url)
        await self._caught_up_to(info.state.last_seq)
        reply = read(data)
        return await reply if isinstance(reply, asyncio.Future) else reply

    async def _caught_up_to(self, seq: int) -> None:
        if seq <= self.applied_through:
            return
        waiter = asyncio.get_running_loop().create_future()
        self.catching_up.append((seq, waiter))
        within = max(self.timeout_s, CATCH_UP_AT_LEAST_S)
        try:
            await asyncio.wait_for(waiter, within)
        except asyncio.TimeoutError:
            self.catching_up = [(s, w) for s, w in self.catching_up if w is not waiter]
            raise KSIError(UNAVAILABLE, f"this node's copy of the conversations is behind the "
                           f"stream (at {self.applied_through} of {seq} after {within:g} s)") \
                from None


def _shaped(task: asyncio.Future, shape) -> asyncio.Future:
    async def shaped():
        return shape(await task)
    return asyncio.ensure_future(shaped())


async def _after(waiting, work):
    """Run `work` once what it must follow has finished, whatever that ended in."""
    if waiting is not None:
        await asyncio.wait([waiting])
    return await work
