"""Event names and message topics as NATS subjects, and subscription patterns as filters.

A name is split at `:` and each part becomes one subject token, escaped as kv_keys.py escapes
a key (letters, digits, `-`, `_` stay; anything else is `=` and hex, so `.` is `=2E`); an empty
part is the token `=`, which no escape produces. So:

    event `agent:spawned` raised on node-a   ->  ksi.event.node-a.agent.spawned
    topic `room:lobby`                       ->  ksi.msg.room.lobby
    topic `agents.alice`                     ->  ksi.msg.agents=2Ealice

A subscription pattern (fnmatch, as `system:subscribe` and `message:subscribe` take them) maps
to a filter that matches a superset of what the pattern matches: its whole literal parts before
the first wildcard, then `>` (`room:*` -> `room.>`, `ro*` -> `>`); a pattern without wildcards
is its exact subject. The node still checks the pattern itself on what the filter lets in.
"""
from __future__ import annotations

from .kv_keys import escape

EVENTS = "ksi.event"
MESSAGES = "ksi.msg"
MESSAGE_STREAM = "KSI_MESSAGES"  # the stream of every topic (message_streams.py)
WILDCARDS = frozenset("*?[")


def tokens_of(name: str) -> str:
    return ".".join(escape(part) if part else "=" for part in name.split(":"))


def event_subject(node_id: str, event: str) -> str:
    return f"{EVENTS}.{node_id}.{tokens_of(event)}"


def topic_subject(topic: str) -> str:
    return f"{MESSAGES}.{tokens_of(topic)}"


def pattern_tokens(pattern: str) -> str:
    """The filter's tokens for `pattern`: exact, or literal parts then `>`."""
    if not any(c in WILDCARDS for c in pattern):
        return tokens_of(pattern)
    literal = []
    for part in pattern.split(":"):
        if any(c in WILDCARDS for c in part):
            break
        literal.append(escape(part) if part else "=")
    return ".".join([*literal, ">"])


def event_filter(pattern: str) -> str:
    """Events matching `pattern` raised on any node."""
    return f"{EVENTS}.*.{pattern_tokens(pattern)}"


def topic_filters(patterns) -> list[str]:
    """The stream filters of a set of topic patterns, none covering another (JetStream refuses
    overlapping filters on one consumer)."""
    filters = sorted({f"{MESSAGES}.{pattern_tokens(p)}" for p in patterns})
    return [f for f in filters if not any(other != f and covers(other, f) for other in filters)]


def covers(wide: str, narrow: str) -> bool:
    """Whether every subject `narrow` matches is matched by `wide` (filters of this module:
    literal tokens, optionally ending in `>`)."""
    if not wide.endswith(".>"):
        return wide == narrow
    prefix = wide[:-1]  # 'ksi.msg.room.'
    return narrow.startswith(prefix) and narrow != prefix
