"""Agents' inboxes in cluster mode: one durable JetStream consumer per agent.

The consumer is the inbox's position: it belongs to the cluster, not to a node, so whichever
node the agent runs on reads it from where the agent left it. Its filters are the agent's
topic patterns (subjects.py; a superset, the pattern is checked again here), the patterns
themselves are kept in the consumer's metadata, and a message is acknowledged after the
`agent:inbox` event that hands it over has been handled. What was handed but not acknowledged
(a node killed in between, an ack lost) comes again: delivery is at least once. The message
ids handed recently are remembered per agent, so a redelivery within this process is
acknowledged without being handed twice.

Subscribing without `replay` while the agent is not being read on this node starts its
inbox afresh (the consumer is re-created at the stream's end), as the single daemon skips
what an inbox missed; with `replay` the agent gets everything since its position.
"""
from __future__ import annotations

import asyncio
import hashlib
from collections import OrderedDict

import orjson
import structlog

from ...protocol import KSIError, VALIDATION_ERROR
from .bounded import ask
from .kv_keys import escape
from .subjects import MESSAGE_STREAM, topic_filters

ACK_WAIT_S = 30.0  # a message handed but not acknowledged within this comes again
FETCH_WAIT_S = 5.0
RETRY_AFTER_S = 1.0
REMEMBERED_IDS = 4096  # message ids handed, per agent, for the dedupe of redeliveries
PATTERNS_KEY = "ksi_patterns"
log = structlog.get_logger("ksi.plugin.cluster")


def consumer_name(agent_id: str) -> str:
    """`inbox_<agent id, escaped>`; a long id by its hash (names must stay short)."""
    escaped = escape(agent_id)
    if len(escaped) > 120:
        escaped = "h" + hashlib.sha256(agent_id.encode()).hexdigest()[:40]
    return f"inbox_{escaped}"


class InboxConsumers:
    def __init__(self, bus, local, queue_size: int):
        self.bus, self.local, self.queue_size = bus, local, queue_size
        self.readers: dict[str, asyncio.Task | None] = {}  # agents read on this node
        self.handed: dict[str, OrderedDict] = {}  # agent id -> message ids handed recently

    # ---- subscribing -------------------------------------------------------------------------

    async def subscribe(self, agent_id: str, topics: list[str], replay: bool,
                        max_patterns: int) -> dict:
        info = await self._info(agent_id)
        if not topics and info is None:
            raise KSIError(VALIDATION_ERROR, f"agent {agent_id} has no stored subscription; "
                           "name its topics")
        stored = patterns_of(info)
        patterns = list(dict.fromkeys([*stored, *topics]))
        if len(patterns) > max_patterns:
            raise KSIError(VALIDATION_ERROR, f"an agent may hold at most {max_patterns} "
                           "subscriptions")
        afresh = info is not None and not replay and agent_id not in self.readers
        if afresh:
            await self._ask(self.bus.js.delete_consumer(MESSAGE_STREAM, consumer_name(agent_id)))
        info = await self._ask(self.bus.js.add_consumer(MESSAGE_STREAM,
                                                        self._config(agent_id, patterns)))
        replayed = info.num_pending + info.num_ack_pending if replay else 0
        if agent_id not in self.readers:
            self.readers[agent_id] = self._start(agent_id)
        return {"topics": patterns, "agent_id": agent_id, "replayed": replayed}

    async def unsubscribe(self, agent_id: str, topics: list[str] | None) -> list[str]:
        info = await self._info(agent_id)
        if info is None:
            self._stop_reading(agent_id)
            return []
        stored = patterns_of(info)
        left = stored if topics is None else [p for p in stored if p in topics]
        remaining = [p for p in stored if p not in left]
        if remaining:
            await self._ask(self.bus.js.add_consumer(MESSAGE_STREAM,
                                                     self._config(agent_id, remaining)))
        else:
            self._stop_reading(agent_id)
            self.handed.pop(agent_id, None)
            await self._ask(self.bus.js.delete_consumer(MESSAGE_STREAM, consumer_name(agent_id)))
        return left

    def _config(self, agent_id: str, patterns: list[str]):
        from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
        return ConsumerConfig(
            durable_name=consumer_name(agent_id), deliver_policy=DeliverPolicy.NEW,
            ack_policy=AckPolicy.EXPLICIT, ack_wait=ACK_WAIT_S,
            max_ack_pending=self.queue_size, filter_subjects=topic_filters(patterns),
            metadata={PATTERNS_KEY: orjson.dumps(patterns).decode(), "ksi_agent": agent_id})

    async def _info(self, agent_id: str):
        from nats.js.errors import NotFoundError
        try:
            return await self._ask(self.bus.js.consumer_info(MESSAGE_STREAM,
                                                             consumer_name(agent_id)))
        except NotFoundError:
            return None

    async def _ask(self, request):
        from nats.js.errors import APIError, NotFoundError
        try:
            return await ask(request, self.bus.timeout_s, "the cluster's inbox consumers",
                             self.bus.node.nats_url)
        except NotFoundError:
            raise
        except APIError as exc:
            raise KSIError(VALIDATION_ERROR, f"JetStream refused the inbox: {exc}") from None

    # ---- reading: this node hands the agent its messages -------------------------------------

    def _start(self, agent_id: str) -> asyncio.Task:
        return asyncio.get_running_loop().create_task(self._read(agent_id),
                                                      name=f"cluster-inbox-{agent_id}")

    def _stop_reading(self, agent_id: str) -> None:
        task = self.readers.pop(agent_id, None)
        if task is not None:
            task.cancel()

    def pause(self) -> None:
        """NATS is gone: stop reading (the agents stay known, to be read again when it is back)."""
        for agent_id, task in self.readers.items():
            if task is not None:
                task.cancel()
            self.readers[agent_id] = None

    def resume_later(self, agent_id: str) -> None:
        self.readers.setdefault(agent_id, None)

    def resume(self) -> None:
        for agent_id, task in list(self.readers.items()):
            if task is None or task.done():
                self.readers[agent_id] = self._start(agent_id)

    async def stop(self) -> None:
        tasks = [task for task in self.readers.values() if task is not None]
        self.readers.clear()
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=2.0)

    async def _read(self, agent_id: str) -> None:
        import nats.errors
        from nats.js.errors import NotFoundError
        name = consumer_name(agent_id)
        handed = self.handed.setdefault(agent_id, OrderedDict())
        while True:
            try:
                if await self._info(agent_id) is None:  # unsubscribed, by this node or another
                    log.info("cluster_inbox_gone", agent_id=agent_id)
                    if self.readers.get(agent_id) is asyncio.current_task():
                        del self.readers[agent_id]
                    return
                sub = await self._ask(self.bus.js.pull_subscribe_bind(durable=name,
                                                                      stream=MESSAGE_STREAM))
                while True:
                    try:
                        batch = await sub.fetch(min(64, self.queue_size), timeout=FETCH_WAIT_S)
                    except (asyncio.TimeoutError, nats.errors.TimeoutError):
                        continue
                    for index, msg in enumerate(batch):
                        if not await self._hand_over(agent_id, msg, handed):
                            for rest in batch[index + 1:]:  # the new home's too, at once
                                await rest.nak()
                            log.info("cluster_inbox_left", agent_id=agent_id)
                            if self.readers.get(agent_id) is asyncio.current_task():
                                del self.readers[agent_id]
                            return
            except asyncio.CancelledError:
                raise
            except NotFoundError:
                continue  # deleted meanwhile: the check above ends the reading
            except Exception as exc:  # noqa: BLE001 - NATS gone or the consumer deleted
                log.warning("cluster_inbox_read_failed", agent_id=agent_id, error=repr(exc))
                await asyncio.sleep(RETRY_AFTER_S)

    async def _hand_over(self, agent_id: str, msg, handed: OrderedDict) -> bool:
        """Hand one message over and acknowledge it; False, leaving it to be delivered again
        at once, when the agent does not run on this node (any more): its new home reads it."""
        record = orjson.loads(msg.data)
        record.pop("node", None)
        message_id = record["message_id"]
        if message_id not in handed and record["sender"] != agent_id:
            if not await self.local.to_agent(agent_id, record):
                await msg.nak()
                return False
            handed[message_id] = None
            if len(handed) > REMEMBERED_IDS:
                handed.popitem(last=False)
        await msg.ack()
        return True


def patterns_of(info) -> list[str]:
    if info is None:
        return []
    metadata = info.config.metadata or {}
    return list(orjson.loads(metadata.get(PATTERNS_KEY, "[]")))
