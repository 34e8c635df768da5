"""Opening a KV bucket and writing one of its keys, as the cluster's KV stores do.

A write is a publish on the key's subject (`$KV.<bucket>.<key>`), not nats-py's `kv.put`, so
that it can carry what `put` does not: the revision the key must still be at (JetStream then
decides a compare-and-set for the whole cluster), a per-message TTL, or a delete marker.
"""
from __future__ import annotations

from ...protocol import UNAVAILABLE, KSIError
from .bounded import ask

EXPECTED_LAST = "Nats-Expected-Last-Subject-Sequence"
# JetStream's codes for a failed expected-sequence check
WRONG_LAST_SEQUENCE = (10071, 10164)


class WrongLastSequence(Exception):
    """The key is not at the revision the write expected."""


async def open_bucket(js, bucket: str, replicas: int, **config):
    """The bucket, created (file storage, history 1, `config` added) if it does not exist."""
    from nats.js.api import KeyValueConfig, StorageType
    from nats.js.errors import BucketNotFoundError
    try:
        return await js.key_value(bucket)
    except BucketNotFoundError:
        return await js.create_key_value(KeyValueConfig(
            bucket=bucket, history=1, storage=StorageType.FILE, replicas=replicas, **config))


async def publish_key(js, bucket: str, key: str, payload: bytes, last: int | None, *,
                      timeout_s: float, what: str, nats_url: str, ttl: int | None = None,
                      delete: bool = False) -> int:
    """Write `key` (expecting revision `last` unless None); its revision once stored. Raises
    WrongLastSequence when the key has moved on, `unavailable` for anything else."""
    from nats.js.errors import APIError
    headers = {}
    if last is not None:
        headers[EXPECTED_LAST] = str(last)
    if delete:
        headers["KV-Operation"] = "DEL"
    try:
        ack = await ask(js.publish(f"$KV.{bucket}.{key}", payload, timeout=timeout_s,
                                   headers=headers or None, msg_ttl=ttl),
                        timeout_s, what, nats_url)
    except APIError as exc:
        if exc.err_code in WRONG_LAST_SEQUENCE:
            raise WrongLastSequence() from None
        raise KSIError(UNAVAILABLE, f"JetStream refused the write to {what}: {exc}") from None
    return ack.seq
