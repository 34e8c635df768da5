"""A state value as the bytes of its KV entry: the JSON of the value, with its expiry if any.

A value without expiry is its JSON text, as `nats kv get` shows it. A value with `ttl_s` starts
with one line `~<expires_at>` (seconds since the epoch, the writing node's clock) before the
JSON: `~` never starts JSON, so the two kinds cannot be confused. The expiry travels in the
value because the watch that feeds every node's cache does not carry the message's TTL header,
and each node must hide an expired key at once, before the server removes it (the server's
per-message TTL counts whole seconds: docs/CLUSTER.md).
"""
from __future__ import annotations

_EXPIRY_MARK = b"~"


def encode(value_json: bytes, expires_at: float | None) -> bytes:
    if expires_at is None:
        return value_json
    return b"%s%r\n%s" % (_EXPIRY_MARK, expires_at, value_json)


def decode(data: bytes) -> tuple[bytes, float | None]:
    """(the value's JSON, expires_at or None)."""
    if not data.startswith(_EXPIRY_MARK):
        return data, None
    line, _, value_json = data.partition(b"\n")
    return value_json, float(line[1:])
