"""The state audit in cluster mode: one JetStream stream of records, written by the node that
made the change, read by `state:audit` on any node.

A change's record is published after the KV ack and before the write's reply, so every
acknowledged change has its record (a node killed between the two acks stored the change but
never answered it, like any write whose reply was lost: docs/CLUSTER.md, "The audit"). A
refusal's record is published without holding anything up, as the single daemon writes its row.
An expiry is recorded by every node that sees the server's marker, under one message id, which
JetStream's duplicate window keeps once.

Subjects: `<stream>.<namespace>.<key>` for a record of one key, `<stream>.<namespace>` for one
without (a clear, a refusal), both escaped as the KV keys are (kv_keys.py), so a read filters on
the server. The stream keeps `keep_s` seconds and at most `keep_records` records (the newest);
a record's `id` is its stream sequence.
"""
from __future__ import annotations

import asyncio
import time
from collections import deque

import orjson

from ...protocol import UNAVAILABLE, KSIError
from .bounded import ask
from .kv_keys import escape

DUPLICATE_WINDOW_S = 120.0  # an expiry recorded by every node is kept once within this window
WHAT = "the cluster's state audit"
READ_AT_MOST_S = 30.0  # one `state:audit` scans the matching records for at most this long


class AuditStream:
    def __init__(self, node, stream: str, replicas: int, keep_s: float, keep_records: int,
                 timeout_s: float):
        self.node, self.stream, self.replicas = node, stream, replicas
        self.keep_s, self.keep_records, self.timeout_s = keep_s, keep_records, timeout_s
        self.js = None

    async def cluster_up(self, js) -> None:
        """Create the stream, or bring an existing one's retention to the settings."""
        from nats.js.api import StorageType, StreamConfig
        from nats.js.errors import NotFoundError
        config = StreamConfig(
            name=self.stream, subjects=[f"{self.stream}.>"], storage=StorageType.FILE,
            num_replicas=self.replicas, max_age=self.keep_s, max_msgs=self.keep_records,
            duplicate_window=DUPLICATE_WINDOW_S)
        try:
            info = await js.stream_info(self.stream)
        except NotFoundError:
            await js.add_stream(config)
        else:
            if (info.config.max_age, info.config.max_msgs) != (self.keep_s, self.keep_records):
                config.num_replicas = info.config.num_replicas  # kept as created
                await js.update_stream(config)
        self.js = js

    async def record(self, namespace: str, key: str | None, op: str, version: int | None,
                     who: tuple, *, event: str | None = None, detail: str | None = None,
                     msg_id: str | None = None) -> int:
        """Publish one record; its id (the stream sequence) once JetStream stored it.
        `who` is (peer_pid, peer_uid, correlation_id, agent_id)."""
        from nats.js.errors import APIError
        peer_pid, peer_uid, correlation_id, agent_id = who
        payload = orjson.dumps({
            "at": time.time(), "namespace": namespace, "key": key, "op": op,
            "version": version, "peer_pid": peer_pid, "peer_uid": peer_uid,
            "correlation_id": correlation_id, "agent_id": agent_id, "event": event,
            "detail": detail, "node": self.node.node_id})
        subject = f"{self.stream}.{escape(namespace)}" + \
            ("" if key is None else f".{escape(key)}")
        try:
            ack = await ask(self.js.publish(subject, payload, timeout=self.timeout_s,
                                            headers={"Nats-Msg-Id": msg_id} if msg_id else None),
                            self.timeout_s, WHAT, self.node.nats_url)
        except APIError as exc:
            raise KSIError(UNAVAILABLE, f"JetStream refused the audit record: {exc}") from None
        return ack.seq

    async def entries(self, namespace: str | None, key: str | None, limit: int) -> list[dict]:
        """The newest `limit` records matching, oldest first: read from the stream itself, so
        every record acknowledged anywhere before the call is there."""
        filters = self._filters(namespace, key)
        matching = 0
        for subject in filters:
            info = await ask(self.js.stream_info(self.stream, subjects_filter=subject),
                             self.timeout_s, WHAT, self.node.nats_url)
            matching += sum((info.state.subjects or {}).values())
            last_seq = info.state.last_seq
        if not matching:
            return []
        start = max(1, last_seq - limit + 1) if filters == [f"{self.stream}.>"] else 1
        try:
            return await asyncio.wait_for(self._scan(filters, start, limit), READ_AT_MOST_S)
        except asyncio.TimeoutError:
            raise KSIError(UNAVAILABLE, f"{WHAT} took more than {READ_AT_MOST_S:g} s to read; "
                           "narrow it by namespace or key") from None

    def _filters(self, namespace: str | None, key: str | None) -> list[str]:
        ns = "*" if namespace is None else escape(namespace)
        if key is not None:
            return [f"{self.stream}.{ns}.{escape(key)}"]
        if namespace is None:
            return [f"{self.stream}.>"]
        return [f"{self.stream}.{ns}", f"{self.stream}.{ns}.>"]

    async def _scan(self, filters: list[str], start: int, limit: int) -> list[dict]:
        from nats.js.api import ConsumerConfig, DeliverPolicy
        sub = await self.js.subscribe(
            filters[0], stream=self.stream, ordered_consumer=True,
            config=ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                                  opt_start_seq=start,
                                  filter_subjects=filters if len(filters) > 1 else None))
        import nats.errors
        newest: deque = deque(maxlen=limit)
        try:
            while True:
                try:
                    msg = await sub.next_msg(timeout=self.timeout_s)
                except nats.errors.TimeoutError:  # the rest aged out meanwhile
                    return list(newest)
                newest.append({"id": msg.metadata.sequence.stream, **orjson.loads(msg.data)})
                if msg.metadata.num_pending == 0:
                    return list(newest)
        finally:
            await sub.unsubscribe()
