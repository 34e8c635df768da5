"""The event-history ring's bound in bytes: big data is kept as a small truncated copy.

The ring (`router.history`, a deque of `(event, correlation_id, timestamp, source, data)`) holds
at most `max_event_history` entries, and an entry's data is kept whole only while its JSON
size is at most `max_event_history_bytes / max_event_history` (8 KiB by default); bigger data
is replaced by `truncated(data, size)`. So the ring holds about `max_event_history_bytes` of
data at most, however big the requests were (PROTOCOL.md, "History").

Measuring costs nothing where the size is already known: a request's line, a push's encoded
line. Data a plugin emits is measured by `estimated_size`: orjson's encoding, in C, is about ten
times quicker than walking the data in Python (a timeit of a completion's turn of four
messages here, session 10: 0.8 against 9.5 µs); data orjson cannot encode is walked, the
walk stopping once past the limit.
"""
from __future__ import annotations

from typing import Any

from orjson import dumps as _dumps

KEPT_FIELDS = 16  # top-level fields of a truncated copy kept when small, and left-out names
SMALL_TEXT = 128  # characters: a string field up to this long is small
NAME_CHARS = 64   # a left-out field's name is cut to this many characters


def entry_limit(max_entries: int, max_bytes: int) -> int:
    """The most bytes of data one entry keeps whole."""
    return max_bytes // max_entries if max_entries else 0


def truncated(data: Any, size: int) -> dict:
    """A small stand-in for `data` (about `size` bytes as JSON): its small top-level fields,
    and under `_truncated` the original size and the names of the fields left out."""
    marker: dict[str, Any] = {"bytes": size}
    copy: dict[str, Any] = {"_truncated": marker}
    if data.__class__ is not dict:
        return copy
    left_out = []
    for name, value in data.items():
        if len(copy) <= KEPT_FIELDS and len(name) <= NAME_CHARS and _is_small(value):
            copy[name] = value
        elif len(left_out) < KEPT_FIELDS:
            left_out.append(name[:NAME_CHARS])
    marker["left_out"] = left_out
    return copy


def _is_small(value: Any) -> bool:
    kind = value.__class__
    if kind is str:
        return len(value) <= SMALL_TEXT
    return value is None or kind is bool or kind is int or kind is float


def estimated_size(value: Any, limit: int) -> int:
    """How many bytes `value` takes as JSON, or about as many (`walked_size`) when orjson
    cannot encode it."""
    try:
        return len(_dumps(value))
    except TypeError:
        return walked_size(value, limit)


def walked_size(value: Any, limit: int) -> int:
    """About how many bytes `value` takes as JSON (characters of text, not UTF-8 bytes); once
    the count passes `limit` it stops and returns what it has counted so far."""
    kind = value.__class__
    if kind is str:
        return len(value) + 2
    if kind is dict:
        size = 2
        for name, item in value.items():
            size += len(name) + 4 + (len(item) + 2 if item.__class__ is str
                                     else walked_size(item, limit - size))
            if size > limit:
                return size
        return size
    if kind is list or kind is tuple:
        size = 2
        for item in value:
            size += 1 + walked_size(item, limit - size)
            if size > limit:
                return size
        return size
    return 8  # a number, true/false/null, or anything else encoded small
