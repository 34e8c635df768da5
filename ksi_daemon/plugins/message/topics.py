"""What a topic name may be, and how subscription patterns match topics.

Topics are free-form names chosen by users (`room:lobby`, `agents.alice`). Patterns follow the
fnmatch rules of `system:subscribe`: `*` alone matches every topic, `room:*` a prefix, and
`?`/`[...]` work as in fnmatch. A published topic is always concrete: wildcards are refused so a
message never lands on a name nobody can subscribe to exactly.
"""
from __future__ import annotations

import fnmatch
from typing import Callable

MAX_TOPIC_LENGTH = 256
WILDCARD_CHARACTERS = frozenset("*?[")


def check_topic_text(topic: str) -> str:
    """Raise ValueError (pydantic turns it into validation_error) for an unusable name."""
    if not topic:
        raise ValueError("a topic may not be empty")
    if len(topic) > MAX_TOPIC_LENGTH:
        raise ValueError(f"a topic may not exceed {MAX_TOPIC_LENGTH} characters")
    if any(ord(c) < 32 or ord(c) == 127 for c in topic):
        raise ValueError("a topic may not contain control characters")
    return topic


def check_concrete_topic(topic: str) -> str:
    check_topic_text(topic)
    if any(c in WILDCARD_CHARACTERS for c in topic):
        raise ValueError("wildcards (* ? [) are for subscriptions; publish to a concrete topic")
    return topic


def compile_topic_pattern(pattern: str) -> Callable[[str], bool]:
    if pattern == "*":
        return lambda topic: True
    wildcards = [i for i, c in enumerate(pattern) if c in WILDCARD_CHARACTERS]
    if not wildcards:
        return pattern.__eq__
    if wildcards == [len(pattern) - 1] and pattern.endswith("*"):
        prefix = pattern[:-1]
        return lambda topic: topic.startswith(prefix)
    return lambda topic: fnmatch.fnmatchcase(topic, pattern)
