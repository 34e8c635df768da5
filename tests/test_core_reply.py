"""Exactly one reply, always (PROTOCOL.md §1): even when a reply cannot be encoded.

orjson decodes input nested up to 1024 levels but encodes at most 254, so before the fix a
request nested 255-1023 deep whose reply echoed it (a validation error's details) got no reply
at all, and neither did a handler whose result could not be encoded.
"""
from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from conftest import module_daemon
from ksi_daemon.core.protocol import ENCODER_MAX_NESTING, MAX_NESTING, KSIError, parse_request

PLUGINS = Path(__file__).parent / "plugins"


def nested(levels: int):
    value = 1
    for _ in range(levels):
        value = [value]
    return value


def line_nested(event: str, field: str, depth: int, cid: str, **data) -> bytes:
    """A request line nested `depth` levels deep in all: the envelope, `data`, and the field's
    arrays."""
    arrays = depth - 2
    prefix = orjson.dumps({"event": event, "correlation_id": cid, "data": data})[:-2]
    comma = b"," if data else b""
    return (prefix + comma + b'"' + field.encode() + b'":' + b"[" * arrays + b"]" * arrays
            + b"}}\n")


@pytest.fixture(scope="module")
def daemon():
    # One daemon for the module: every test speaks on connections of its own and changes no
    # state (each deep request is refused, the unencodable handlers write nothing).
    with module_daemon({"daemon": {"plugin_dirs": [str(PLUGINS / "unencodable")]}},
                       "ksi-reply-") as daemon:
        yield daemon


# ---- the limits, measured -------------------------------------------------------------------

def test_orjson_encodes_254_levels_and_decodes_1024():
    orjson.dumps(nested(ENCODER_MAX_NESTING))
    with pytest.raises(orjson.JSONEncodeError):
        orjson.dumps(nested(ENCODER_MAX_NESTING + 1))
    orjson.loads(b"[" * 1024 + b"]" * 1024)  # so 255-1024 decode, and could not be echoed


def test_a_request_nested_at_the_limit_is_read_one_deeper_is_refused():
    event, data, cid = parse_request(line_nested("x:y", "v", MAX_NESTING, "c-1").strip())
    assert (event, cid) == ("x:y", "c-1")
    with pytest.raises(KSIError) as refused:
        parse_request(line_nested("x:y", "v", MAX_NESTING + 1, "c-2").strip())
    assert refused.value.code == "invalid_request"
    assert (refused.value.event, refused.value.correlation_id) == ("x:y", "c-2")
    assert str(MAX_NESTING) in refused.value.message


def test_a_long_flat_line_with_many_brackets_is_not_too_deep():
    flat = orjson.dumps({"event": "x:y", "data": {"items": [[1]] * 5000}})
    assert parse_request(flat)[1]["items"][0] == [1]


# ---- through the socket ---------------------------------------------------------------------

@pytest.mark.parametrize("depth", [MAX_NESTING + 1, ENCODER_MAX_NESTING, 255, 600, 1023])
@pytest.mark.parametrize("event, field, data", [
    ("agent:spawn", "task", {"profile": "default"}),
    ("agent:send", "content", {"agent_id": "nobody"}),
    ("system:event_history", "limit", {}),
    ("state:set", "value", {"key": "deep"}),
])
def test_deep_input_is_refused_with_one_coded_reply(daemon, event, field, data, depth):
    with daemon.client(timeout=5) as client:
        client.send_raw(line_nested(event, field, depth, "deep", **data))
        reply = client.recv()
        assert reply["correlation_id"] == "deep" and reply["event"] == event
        assert reply["error"]["code"] == "invalid_request", reply
        client.send("system:health", correlation_id="after")
        assert client.recv()["correlation_id"] == "after"


def test_input_at_the_limit_is_answered_and_echoed_by_replies_and_history(daemon):
    with daemon.client(timeout=5) as client:
        client.send_raw(line_nested("agent:spawn", "task", MAX_NESTING, "echo",
                                    profile="default"))
        refused = client.recv()
        assert refused["correlation_id"] == "echo"
        assert refused["error"]["code"] == "validation_error" and refused["error"]["details"]
        client.send_raw(line_nested("system:health", "blob", MAX_NESTING, "kept"))
        assert client.recv()["data"]["status"] == "healthy"
        history = client.request("system:event_history", {"limit": 10})
        assert {"echo", "kept"} <= {e["correlation_id"] for e in history["data"]["events"]}


@pytest.mark.parametrize("event, code", [
    ("unencodable:big_int", "handler_error"),
    ("unencodable:deep", "handler_error"),
    ("unencodable:deep_details", "conflict"),
    ("unencodable:deep_async", "handler_error"),
    ("unencodable:deep_future", "handler_error"),
    ("unencodable:deep_later", "handler_error"),
])
def test_a_reply_that_cannot_be_encoded_becomes_one_coded_error(daemon, event, code):
    with daemon.client(timeout=5) as client:
        client.send(event, correlation_id="unencodable")
        client.send("system:health", correlation_id="after")
        replies = {r["correlation_id"]: r for r in (client.recv(), client.recv())}
    reply = replies["unencodable"]  # (an async handler's reply may come after "after")
    assert reply["event"] == event and reply["error"]["code"] == code, reply
    assert "details" not in reply["error"] and reply["error"]["message"]
    assert replies["after"]["data"]["status"] == "healthy"
