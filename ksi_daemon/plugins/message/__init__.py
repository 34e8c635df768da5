"""The `message` events: topics, publish/subscribe, retention, and agents' inboxes.

    message:subscribe {topics}          this connection receives `message:received` pushes
    message:subscribe {agent_id, topics, replay?}   the agent receives `agent:inbox` events
    message:unsubscribe {topics?, agent_id?}
    message:publish {topic, content, sender?} -> {message_id, delivered}
    message:history {topic, limit}

A publish is encoded once and written onto each subscribed connection, then kept (last
`retention_per_topic` per topic, optionally no older than `retention_max_age_s`) in memory and in
`messages.db` under the plugin's data directory, committed in batches right after the reply (see
retention_writer.py for what that trades). Agents' subscriptions and cursors are committed before
their replies.

In cluster mode another plugin supplies a `MessageBus` (bus_seam.py, hook `ksi_message_bus` in
hookspecs.py): the cluster plugin's JetStream streams then hold the retention and agents'
inboxes for every node, and this plugin keeps only this node's connection subscriptions
(docs/CLUSTER.md, "Messages").
"""
from __future__ import annotations

import asyncio
import itertools
import os
import time
from pathlib import Path

import structlog

from ...event_system import event_handler
from ...plugin_base import BasePlugin, hookimpl
from ...plugin_types import PluginCapabilities, PluginMetadata
from ...core.protocol import encode_push
from ...protocol import UNAVAILABLE, VALIDATION_ERROR, KSIError
from ...storage.plugin_database import PluginDatabase
from ...storage.sqlite_writer import SqliteWriter, WriterStopped
from . import hookspecs
from .agents import AgentInboxes
from .bus_delivery import BusDelivery
from .connections import ConnectionSubscriptions
from .models import (HistoryReply, HistoryRequest, MessageSettings, PublishReply, PublishRequest,
                     SubscribeRequest, TopicsReply, UnsubscribeRequest)
from .retention import RetainedMessages
from .retention_writer import RetentionWriter
from .store import (create_schema, load, prune, remove_agent_patterns,
                    save_agent_patterns, save_cursors)

DB_FILE_NAME = "messages.db"
PUSH_EVENT = "message:received"
SWEEP_PERIOD_S = 30.0
# The agent subscription handlers only wait for the database writer, which answers `timeout` on its own past the
# daemon's event_timeout (SqliteWriter.enforce_deadlines): a timer per request would cost more
# than the publish itself under fan-out load.
WRITER_DEADLINE = None
CURSOR_FLUSH_DELAY_S = 0.05  # cursors of a burst of deliveries go to disk in one write
log = structlog.get_logger("ksi.plugin.message")


class MessagePlugin(BasePlugin):
    def __init__(self):
        super().__init__(
            PluginMetadata(name="message", version="0.1.0", priority=20,
                           description="Topics, publish/subscribe and agents' inboxes",
                           hookspecs=[hookspecs]),
            PluginCapabilities(event_namespaces=["message"], provides_services=["message"]))
        self.writer: SqliteWriter | None = None
        self.bus = None  # a MessageBus in cluster mode (bus_seam.py)
        self._id_prefix = os.urandom(3).hex()
        self._dirty_cursors: dict[str, int] = {}
        self._cursor_flush: asyncio.TimerHandle | None = None

    # ---- lifecycle ---------------------------------------------------------------------------

    @hookimpl
    async def ksi_startup(self, config, context):
        settings = self.settings = MessageSettings.model_validate(context.config or {})
        bus = await context.hook("ksi_message_bus").call_first(config=config)
        if bus is None and config["cluster"]["nats_url"]:
            # A node delivering only its own messages would quietly split the cluster's topics.
            raise RuntimeError("cluster mode is configured but no plugin supplied the cluster's "
                               "message bus (is the cluster plugin disabled?)")
        if bus is not None:
            return await self._start_on_bus(bus, config, context)
        self.path = Path(settings.db_path).expanduser() if settings.db_path else \
            Path(context.data_dir) / DB_FILE_NAME
        max_age = settings.retention_max_age_s
        self.database = PluginDatabase.open(
            self.path, name="message", synchronous=settings.synchronous,
            create_schema=create_schema, deadline_s=config["daemon"]["event_timeout"],
            reader=False, load=lambda conn: load(conn, time.time() - max_age if max_age else None),
            report_degraded=context.report_degraded)
        self.writer = self.database.writer
        self.retained = RetainedMessages(settings.retention_per_topic,
                                         settings.retention_max_age_s, settings.max_topics)
        self.connections = ConnectionSubscriptions(settings.max_patterns_per_subscriber)
        self.agents = AgentInboxes(settings.agent_queue_size, context.emit, self._cursor_moved)
        stored = self.database.loaded
        if settings.retention_per_topic:
            for seq, message in stored.messages:
                self.retained.add(seq, message)
        self.agents.restore(stored.patterns, stored.cursors)
        self._seq = itertools.count(stored.last_seq + 1)
        self.last_seq = stored.last_seq
        self.retention_writer = RetentionWriter(self.writer)
        # What a smaller retention setting or the age limit no longer keeps leaves the file now.
        self.writer.submit(prune, self.retained.oldest_kept(), self.retained.drop_expired()
                           ).add_done_callback(log_failed_write)
        log.info("message_store_open", path=str(self.path), retained=len(self.retained),
                 agents=len(stored.patterns), last_seq=stored.last_seq)

    async def _start_on_bus(self, bus, config, context) -> None:
        """Cluster mode: no database here; the bus stores, retains and reaches the agents."""
        self.connections = ConnectionSubscriptions(self.settings.max_patterns_per_subscriber)
        self.delivery = BusDelivery(self.connections, context.emit)
        node_id = config["cluster"]["node_id"]
        # Unique across the nodes and their restarts: the stream drops a second message with the
        # id of one stored in its duplicate window (two minutes).
        self._id_prefix = f"{node_id}-{os.urandom(6).hex()}"
        self._seq = itertools.count(1)
        await bus.open(self.delivery, self.settings)
        self.bus = bus
        log.info("message_bus_open", node_id=node_id)

    @hookimpl
    def ksi_ready(self, context):
        if self.bus is not None:
            return [*self.bus.services(), self._sweep_connections()]
        return [self._sweep()]  # (the write deadlines: PluginDatabase)

    async def _sweep_connections(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_PERIOD_S)
            self.connections.forget_closed()

    @hookimpl
    async def ksi_shutdown(self, context):
        if self.bus is not None:
            await self.bus.close()
            return
        if self.writer is None:
            return
        await self.agents.stop()
        self.retention_writer.flush()
        self._flush_cursors()
        await self.database.close()

    async def _sweep(self) -> None:
        """Drop closed connections nobody published to, and messages past the maximum age."""
        while True:
            await asyncio.sleep(SWEEP_PERIOD_S)
            self.connections.forget_closed()
            cutoff = self.retained.drop_expired()
            if cutoff is not None:
                try:
                    await self._write(prune, self.retained.oldest_kept(), cutoff)
                except KSIError as exc:  # a slow disk is no reason to stop sweeping
                    log.warning("message_prune_failed", error=exc.message)

    # ---- events ------------------------------------------------------------------------------

    @event_handler("message:subscribe", timeout=WRITER_DEADLINE, returns=TopicsReply)
    async def subscribe(self, data: SubscribeRequest, ctx):
        """Receive messages on topics or patterns ('*', 'room:*'), or route them to an agent.

        With agent_id the messages go to that agent's inbox as `agent:inbox` events, the
        subscription is stored, and `replay` hands over what the agent missed meanwhile.
        """
        if data.agent_id is None:
            if ctx.connection is None:
                raise KSIError(VALIDATION_ERROR, "agent_id is required outside a connection")
            if not data.topics:
                raise KSIError(VALIDATION_ERROR, "topics must name at least one topic",
                               [{"loc": ["topics"], "msg": "empty"}])
            if data.replay:
                raise KSIError(VALIDATION_ERROR, "replay is for agent subscriptions (agent_id); "
                               "a connection reads past messages with message:history",
                               [{"loc": ["replay"], "msg": "needs agent_id"}])
            return {"topics": self.connections.subscribe(ctx.connection, data.topics)}
        if self.bus is not None:
            return await self.bus.subscribe_agent(data.agent_id, data.topics, data.replay,
                                                  self.settings.max_patterns_per_subscriber)
        known = self.agents.inboxes.get(data.agent_id)
        if not data.topics and known is None:
            raise KSIError(VALIDATION_ERROR, f"agent {data.agent_id} has no stored subscription; "
                           "name its topics")
        if len(set(known.patterns if known else ()) | set(data.topics)) > \
                self.settings.max_patterns_per_subscriber:
            raise KSIError(VALIDATION_ERROR, f"an agent may hold at most "
                           f"{self.settings.max_patterns_per_subscriber} subscriptions")
        inbox = self.agents.subscribe(data.agent_id, data.topics, self.last_seq)
        await self._write(save_agent_patterns, inbox.agent_id, list(inbox.patterns),
                          inbox.last_seq)
        missed = list(self.retained.after(inbox.handed_seq, inbox.matches)) if data.replay \
            else None
        replayed = self.agents.activate(inbox, missed, self.last_seq)
        return {"topics": list(inbox.patterns), "agent_id": inbox.agent_id,
                "replayed": replayed}

    @event_handler("message:unsubscribe", timeout=WRITER_DEADLINE, returns=TopicsReply)
    async def unsubscribe(self, data: UnsubscribeRequest, ctx):
        """Stop receiving these topics (no topics: all of them); with agent_id, for that agent."""
        if data.agent_id is None:
            if ctx.connection is None:
                return {"topics": []}
            return {"topics": self.connections.unsubscribe(ctx.connection, data.topics)}
        if self.bus is not None:
            return {"topics": await self.bus.unsubscribe_agent(data.agent_id, data.topics),
                    "agent_id": data.agent_id}
        left = self.agents.unsubscribe(data.agent_id, data.topics)
        if left:
            await self._write(remove_agent_patterns, data.agent_id, left)
        return {"topics": left, "agent_id": data.agent_id}

    @event_handler("message:publish", returns=PublishReply)
    def publish(self, data: PublishRequest, ctx):
        """Send content to every subscriber of a topic; it is retained for history and replay."""
        seq = self.last_seq = next(self._seq)
        sender = data.sender if data.sender is not None else \
            getattr(ctx.connection, "id", None)
        message = {"message_id": f"msg-{self._id_prefix}-{seq}", "topic": data.topic,
                   "sender": sender, "content": data.content, "timestamp": time.time()}
        if self.bus is not None:
            return asyncio.ensure_future(self._publish_on_bus(message, ctx.correlation_id))
        # Encoded once for every subscribed connection, whatever their number.
        line = encode_push(PUSH_EVENT, message, ctx.correlation_id)
        delivered = self.connections.deliver(data.topic, line, ctx.correlation_id)
        if self.agents.inboxes:
            delivered += self.agents.deliver(seq, message)
        if self.settings.retention_per_topic:
            oldest_kept, forgotten = self.retained.add(seq, message)
            self.retention_writer.add(seq, message, oldest_kept, forgotten)
        return {"message_id": message["message_id"], "delivered": delivered}

    async def _publish_on_bus(self, message: dict, correlation_id) -> dict:
        """Stored for the whole cluster first; then this node's subscribers, then the reply."""
        await self.bus.publish(message)
        delivered = self.delivery.to_connections(message, correlation_id)
        return {"message_id": message["message_id"], "delivered": delivered}

    @event_handler("message:history", returns=HistoryReply)
    def history(self, data: HistoryRequest):
        """The retained messages of a topic, oldest first."""
        if self.bus is not None:
            return asyncio.ensure_future(self._history_on_bus(data))
        messages = self.retained.latest(data.topic, data.limit)
        return {"topic": data.topic, "messages": messages, "count": len(messages)}

    async def _history_on_bus(self, data: HistoryRequest) -> dict:
        messages = await self.bus.history(data.topic, data.limit)
        return {"topic": data.topic, "messages": messages, "count": len(messages)}

    # ---- storage -----------------------------------------------------------------------------

    async def _write(self, op, *args):
        try:
            return await self.writer.submit(op, *args)
        except WriterStopped:
            raise KSIError(UNAVAILABLE, "the daemon is shutting down") from None

    def _cursor_moved(self, agent_id: str, seq: int) -> None:
        self._dirty_cursors[agent_id] = seq
        if self._cursor_flush is None:
            self._cursor_flush = asyncio.get_running_loop().call_later(
                CURSOR_FLUSH_DELAY_S, self._flush_cursors)

    def _flush_cursors(self) -> None:
        if self._cursor_flush is not None:
            self._cursor_flush.cancel()
            self._cursor_flush = None
        if self._dirty_cursors:
            cursors, self._dirty_cursors = self._dirty_cursors, {}
            try:
                self.writer.submit(save_cursors, cursors).add_done_callback(log_failed_write)
            except WriterStopped:
                log.warning("agent_cursors_not_saved", agents=sorted(cursors))


def log_failed_write(future) -> None:
    """For writes nobody waits for: a failure is logged instead of lost."""
    if not future.cancelled() and future.exception() is not None:
        log.error("message_store_write_failed", error=repr(future.exception()))


ksi_plugin = MessagePlugin
