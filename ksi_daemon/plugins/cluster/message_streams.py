"""The message events' bus in cluster mode: one JetStream stream of every topic, for all nodes.

A `MessageBus` (ksi_daemon/plugins/message/bus_seam.py). Each message is one stream message on
its topic's subject (subjects.py: `room:lobby` is `ksi.msg.room.lobby`), published with the
`Nats-Msg-Id` header set to its message id, so a publish retried after a lost ack is stored
once. The stream keeps the last `retention_per_topic` messages of each subject (one topic),
optionally no older than `retention_max_age_s`: that is the retention, and `message:history`
reads it from any node.

Delivery, so that each subscriber gets a message once and not once per node:
- the publishing node's message plugin pushes it to its own subscribed connections once
  JetStream acknowledged it (then the publish's reply; `delivered` counts those connections);
- every node follows the stream with one ordered consumer (the feed) and pushes what other
  nodes published to its own connections; a node's own messages carry its node id and are
  skipped. After a loss of NATS the feed resumes after the last message it saw, so a short
  outage loses nothing for connections that stayed open;
- agents' inboxes are durable consumers (inbox_consumers.py), read by the agent's node.
"""
from __future__ import annotations

import asyncio
from collections import OrderedDict, deque

import orjson
import structlog

from ...protocol import PAYLOAD_TOO_LARGE, UNAVAILABLE, KSIError
from .bounded import ask, let_go, unreachable
from .inbox_consumers import InboxConsumers
from .subjects import MESSAGE_STREAM as STREAM, MESSAGES, topic_subject

DUPLICATE_WINDOW_S = 120.0  # a retry later than this after the first try may be stored twice
HISTORY_BATCH = 256
# A node that has not reached NATS since it started lets an agent's subscription wait this long
# for it: the agent plugin resumes its agents' inboxes while the daemon is starting.
FIRST_CONNECTION_WAIT_S = 10.0
MSG_ID = "Nats-Msg-Id"
log = structlog.get_logger("ksi.plugin.cluster")


class JetStreamMessageBus:
    def __init__(self, node, replicas: int, timeout_s: float):
        self.node, self.replicas, self.timeout_s = node, replicas, timeout_s
        self.js = None
        self.serving = False
        self.feed = None  # this node's ordered consumer of the whole stream
        self.feed_seq: int | None = None  # the last stream sequence the feed handled
        self.inboxes: InboxConsumers | None = None
        self.first_up = asyncio.Event()
        # subject -> the stream sequence of its last message, least recently published first
        self.topics: OrderedDict[str, int] = OrderedDict()
        self.purging: set[asyncio.Task] = set()

    # ---- the MessageBus lifecycle ------------------------------------------------------------

    async def open(self, local, settings) -> None:
        self.local, self.settings = local, settings
        self.inboxes = InboxConsumers(self, local, settings.agent_queue_size)
        self.node.listen(self)

    def services(self) -> list:
        return []  # the connection is the cluster plugin's service

    async def close(self) -> None:
        self.serving = False
        if self.inboxes is not None:
            await self.inboxes.stop()
        await self._stop_feed()

    # ---- the connection comes and goes (a ClusterListener) -----------------------------------

    async def cluster_up(self, js) -> None:
        last_seq = await self._ensure_stream(js)
        self.js = js
        await self._stop_feed()
        if self.feed_seq is None or self.feed_seq > last_seq:  # first start, or a new stream
            self.feed_seq = last_seq
        self.feed = await self._follow(js, self.feed_seq + 1)
        self.serving = True
        self.first_up.set()
        self.inboxes.resume()
        log.info("cluster_messages_following", stream=STREAM, from_seq=self.feed_seq + 1)

    def cluster_down(self) -> None:
        self.serving = False
        if self.inboxes is not None:
            self.inboxes.pause()

    async def _ensure_stream(self, js) -> int:
        """The stream as the first node created it (later nodes do not change its limits)."""
        from nats.js.api import StorageType, StreamConfig
        from nats.js.errors import NotFoundError
        try:
            info = await js.stream_info(STREAM)
        except NotFoundError:
            settings = self.settings
            info = await js.add_stream(StreamConfig(
                name=STREAM, subjects=[f"{MESSAGES}.>"], storage=StorageType.FILE,
                num_replicas=self.replicas, duplicate_window=DUPLICATE_WINDOW_S,
                # A stream cannot keep nothing: with retention 0 a topic keeps its last message.
                max_msgs_per_subject=max(1, settings.retention_per_topic),
                max_msgs=max(1, settings.retention_per_topic) * settings.max_topics,
                max_age=settings.retention_max_age_s or None))
        return info.state.last_seq

    async def _follow(self, js, from_seq: int):
        from nats.js.api import ConsumerConfig, DeliverPolicy
        config = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                                opt_start_seq=from_seq)
        return await js.subscribe(f"{MESSAGES}.>", stream=STREAM, cb=self._from_feed,
                                  ordered_consumer=True, config=config)

    async def _stop_feed(self) -> None:
        feed, self.feed = self.feed, None
        if feed is not None:
            await let_go(feed.unsubscribe(), self.timeout_s)

    async def _from_feed(self, msg) -> None:
        seq = msg.metadata.sequence.stream
        if seq <= self.feed_seq:
            return  # already handled (a feed re-created over the same stretch)
        self.feed_seq = seq
        record = orjson.loads(msg.data)
        ours = record.pop("node", None) == self.node.node_id
        if not ours:  # ours went out at their ack
            self.local.to_connections(record)
        self._count_topic(msg.subject, seq, ours)

    def _count_topic(self, subject: str, seq: int, ours: bool) -> None:
        """Past max_topics the least recently published topic is forgotten, by the node whose
        message made one too many (every node counts, one purges)."""
        self.topics[subject] = seq
        self.topics.move_to_end(subject)
        while len(self.topics) > self.settings.max_topics:
            oldest, last_seq = self.topics.popitem(last=False)
            if ours:
                task = asyncio.ensure_future(self._forget_topic(oldest, last_seq))
                self.purging.add(task)
                task.add_done_callback(self.purging.discard)

    async def _forget_topic(self, subject: str, last_seq: int) -> None:
        try:
            await ask(self.js.purge_stream(STREAM, subject=subject, seq=last_seq + 1),
                      self.timeout_s, "the cluster's message stream", self.node.nats_url)
        except Exception as exc:  # noqa: BLE001 - the stream's max_msgs still bounds it
            log.warning("cluster_topic_not_forgotten", subject=subject, error=repr(exc))

    def check_serving(self) -> None:
        if not self.serving:
            raise unreachable("the cluster's message stream", self.node)

    # ---- the events --------------------------------------------------------------------------

    async def publish(self, message: dict) -> None:
        self.check_serving()
        payload = orjson.dumps({**message, "node": self.node.node_id})
        if len(payload) > self.node.nc.max_payload:  # the server's limit, 1 MiB by default
            raise KSIError(PAYLOAD_TOO_LARGE, f"the message takes {len(payload)} bytes; the "
                           f"cluster's NATS servers take at most {self.node.nc.max_payload}")
        await self._store(topic_subject(message["topic"]), payload, message["message_id"])

    async def _store(self, subject: str, payload: bytes, message_id: str) -> None:
        """Publish until JetStream acknowledges; a second try carries the same message id, so
        the stream keeps one copy whichever of the two it stored."""
        from nats.js.errors import APIError
        for attempt in (1, 2):
            try:
                await ask(self.js.publish(subject, payload, timeout=self.timeout_s,
                                          headers={MSG_ID: message_id}),
                          self.timeout_s, "the cluster's message stream", self.node.nats_url)
                return
            except APIError as exc:
                raise KSIError(UNAVAILABLE, f"JetStream refused the message: {exc}") from None
            except KSIError:
                if attempt == 2 or not self.serving:
                    raise

    async def history(self, topic: str, limit: int) -> list[dict]:
        """The topic's retained messages: read through a short-lived consumer of its subject."""
        self.check_serving()
        from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
        what = "the cluster's message stream"
        sub = await ask(self.js.pull_subscribe(
            topic_subject(topic), stream=STREAM, config=ConsumerConfig(
                deliver_policy=DeliverPolicy.ALL, ack_policy=AckPolicy.NONE,
                inactive_threshold=max(10.0, self.timeout_s), mem_storage=True,
                num_replicas=1)), self.timeout_s, what, self.node.nats_url)
        name = None
        try:
            info = await ask(sub.consumer_info(), self.timeout_s, what, self.node.nats_url)
            name, pending = info.name, info.num_pending
            kept: deque = deque(maxlen=limit)
            while pending > 0:
                batch = await ask(sub.fetch(min(pending, HISTORY_BATCH), timeout=self.timeout_s),
                                  self.timeout_s * 2, what, self.node.nats_url)
                for msg in batch:
                    record = orjson.loads(msg.data)
                    record.pop("node", None)
                    kept.append(record)
                pending -= len(batch)
            return list(kept)
        finally:
            asyncio.ensure_future(self._forget_consumer(sub, name))

    async def _forget_consumer(self, sub, name: str | None) -> None:
        try:
            await asyncio.wait_for(sub.unsubscribe(), self.timeout_s)
            if name is not None:
                await asyncio.wait_for(self.js.delete_consumer(STREAM, name), self.timeout_s)
        except Exception:  # noqa: BLE001 - its inactive_threshold removes it anyway
            pass

    async def subscribe_agent(self, agent_id, topics, replay, max_patterns) -> dict:
        if not self.first_up.is_set():
            try:
                await asyncio.wait_for(self.first_up.wait(), FIRST_CONNECTION_WAIT_S)
            except asyncio.TimeoutError:
                pass
        if not self.serving and replay and not topics:
            # A resumption refused now is done when NATS is back (an unknown agent then drops).
            self.inboxes.resume_later(agent_id)
        self.check_serving()
        return await self.inboxes.subscribe(agent_id, topics, replay, max_patterns)

    async def unsubscribe_agent(self, agent_id, topics) -> list[str]:
        self.check_serving()
        return await self.inboxes.unsubscribe(agent_id, topics)
