"""The wire contract: envelopes, error codes and the one codec (orjson).

Everything that turns bytes into a request or a reply into bytes lives here, so the router and the
transports never build JSON by hand.
"""
from __future__ import annotations

import itertools
import os
import re
import time
from typing import Any

import orjson
import pydantic

# The closed set of error codes of PROTOCOL.md §2: `code` is for programs, `message` for people.
INVALID_JSON = "invalid_json"
INVALID_REQUEST = "invalid_request"
UNKNOWN_EVENT = "unknown_event"
VALIDATION_ERROR = "validation_error"
PAYLOAD_TOO_LARGE = "payload_too_large"
NOT_FOUND = "not_found"
CONFLICT = "conflict"
HANDLER_ERROR = "handler_error"
TIMEOUT = "timeout"
FORBIDDEN = "forbidden"
RATE_LIMITED = "rate_limited"
UNAVAILABLE = "unavailable"
STORAGE_ERROR = "storage_error"  # the database failed (disk full, I/O error): docs/PROTOCOL.md

ERROR_CODES = frozenset({
    INVALID_JSON, INVALID_REQUEST, UNKNOWN_EVENT, VALIDATION_ERROR, PAYLOAD_TOO_LARGE, NOT_FOUND,
    CONFLICT, HANDLER_ERROR, TIMEOUT, FORBIDDEN, RATE_LIMITED, UNAVAILABLE, STORAGE_ERROR,
})

EVENT_NAME = re.compile(r"[a-z0-9_]+(?::[a-z0-9_]+)+")
MAX_CORRELATION_ID = 128

# orjson decodes 1024 nested arrays/objects but encodes at most 254 (255 raise "Recursion limit
# reached"; tests/test_core_reply.py pins both). A request nested deeper than MAX_NESTING is
# refused when it is decoded, so that its reply can always be encoded: the levels between are
# room for replies that embed a request's data (a validation error's details, history entries).
ENCODER_MAX_NESTING = 254
MAX_NESTING = ENCODER_MAX_NESTING - 32
_SHALLOW_LINE = 2 * MAX_NESTING  # a JSON text nested N deep has at least 2N bytes

_loads = orjson.loads
_dumps = orjson.dumps
_now = time.time
_APPEND_NEWLINE = orjson.OPT_APPEND_NEWLINE


class KSIError(Exception):
    """Raise from a handler to answer with a coded error reply instead of `handler_error`."""

    def __init__(self, code: str, message: str, details: Any = None):
        if code not in ERROR_CODES:
            raise ValueError(f"unknown error code {code!r}")
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details

    def as_dict(self) -> dict:
        error = {"code": self.code, "message": self.message}
        if self.details is not None:
            error["details"] = self.details
        return error


# Generated ids only need to be unique within this daemon's life: a random per-process prefix and
# a counter cost a fraction of uuid4().
_ID_PREFIX = os.urandom(4).hex()
_id_counter = itertools.count(1)


def new_correlation_id() -> str:
    return f"ksi-{_ID_PREFIX}-{next(_id_counter)}"


def parse_request(line: bytes, known_events=frozenset()) -> tuple[str, dict, str]:
    """Turn one request line into (event, data, correlation_id), or raise a coded KSIError.

    When the error is raised after the correlation id was read, it is kept on the exception as
    `correlation_id` (and the event name as `event`) so the error reply can carry them.
    `known_events` (anything supporting `in`: the router passes its handler index) holds names
    already known to be well-formed, which skip the pattern check (a third of a microsecond).
    The usual request (a known event, its own correlation id, data an object, a line too short
    to nest deeply) passes one test of all of that; any other is taken apart by `_checked`,
    which supplies the defaults and finds the first thing wrong.
    """
    try:
        request = _loads(line)
    except orjson.JSONDecodeError as exc:
        raise KSIError(INVALID_JSON, f"line is not valid UTF-8 JSON: {exc}") from None
    if request.__class__ is dict:
        event, data = request.get("event"), request.get("data")
        correlation_id = request.get("correlation_id")
        if (data.__class__ is dict and correlation_id.__class__ is str
                and 0 < len(correlation_id) <= MAX_CORRELATION_ID
                and event.__class__ is str and event in known_events
                and len(line) <= _SHALLOW_LINE):
            return event, data, correlation_id
    return _checked(line, request, known_events)


def _checked(line: bytes, request: Any, known_events) -> tuple[str, dict, str]:
    """parse_request for every request but the usual one, each check in the order of the
    error it raises."""
    if type(request) is not dict:
        raise KSIError(INVALID_JSON, f"line is a JSON {type(request).__name__}, not an object")
    correlation_id = request.get("correlation_id")
    if correlation_id is None:
        correlation_id = new_correlation_id()
    elif type(correlation_id) is not str or not 0 < len(correlation_id) <= MAX_CORRELATION_ID:
        raise KSIError(INVALID_REQUEST, "correlation_id must be a non-empty string of at most "
                       f"{MAX_CORRELATION_ID} characters")
    event = request.get("event")
    if type(event) is not str or (event not in known_events
                                  and EVENT_NAME.fullmatch(event) is None):
        error = KSIError(INVALID_REQUEST, "event must be a string like 'namespace:action' "
                         "(lowercase [a-z0-9_] segments joined by ':')")
        error.correlation_id = correlation_id
        raise error
    if len(line) > _SHALLOW_LINE and nests_deeper_than(line, request, MAX_NESTING):
        error = KSIError(INVALID_REQUEST, f"the request is nested more than {MAX_NESTING} "
                         "levels deep, past what a reply could carry")
        error.correlation_id, error.event = correlation_id, event
        raise error
    data = request.get("data")
    if data is None:
        data = {}
    elif type(data) is not dict:
        error = KSIError(INVALID_REQUEST, f"data must be an object, not {type(data).__name__}")
        error.correlation_id, error.event = correlation_id, event
        raise error
    return event, data, correlation_id


def nests_deeper_than(line: bytes, request: dict, limit: int) -> bool:
    """Whether the decoded `request` nests more than `limit` arrays/objects deep. Counting the
    brackets of the line first (in C) spares the walk for nearly every long line."""
    if line.count(b"[") + line.count(b"{") <= limit:
        return False
    stack = [(request, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > limit:
            return True
        for child in value.values() if value.__class__ is dict else value:
            if child.__class__ is dict or child.__class__ is list:
                stack.append((child, depth + 1))
    return False


def as_reply_data(result: Any) -> Any:
    """What a handler returned, as a reply's `data`: a dict, {} for None, a model dumped."""
    if result is None:
        return {}
    if isinstance(result, dict):
        return result
    if isinstance(result, pydantic.BaseModel):
        return result.model_dump(mode="json")
    return {"result": result}


def encode_reply(event: str | None, correlation_id: str, data: Any, timestamp: float) -> bytes:
    """`timestamp`: the reply path's own clock reading, shared with the request's history entry
    (one reading per request instead of two)."""
    return _dumps({"type": "reply", "event": event, "correlation_id": correlation_id,
                   "data": data, "timestamp": timestamp},
                  option=_APPEND_NEWLINE, default=_jsonable)


def encode_error(event: str | None, correlation_id: str | None, error: KSIError) -> bytes:
    return _dumps({"type": "reply", "event": event,
                   "correlation_id": correlation_id or new_correlation_id(),
                   "error": error.as_dict(), "timestamp": _now()},
                  option=_APPEND_NEWLINE, default=_jsonable)


def encode_push(event: str, data: Any, correlation_id: str | None) -> bytes:
    return _dumps({"type": "event", "event": event, "data": data,
                   "correlation_id": correlation_id, "timestamp": _now()},
                  option=_APPEND_NEWLINE, default=_jsonable)


def _jsonable(value: Any) -> Any:
    """orjson's fallback for what it cannot encode: pydantic models, sets, paths."""
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    return str(value)
