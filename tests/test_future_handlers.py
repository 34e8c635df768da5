"""A plain (sync) handler may return an asyncio Future; the router replies when it resolves.

The daemon runs in this process (tests/inprocess.py); the half-close test uses its real socket.
"""
from __future__ import annotations

from pathlib import Path

import pytest

PLUGINS = Path(__file__).parent / "plugins"


@pytest.fixture
def daemon(inprocess_factory):
    return inprocess_factory({"daemon": {"plugin_dirs": [str(PLUGINS / "futures")],
                                      "event_timeout": 0.5}})


def test_the_reply_is_the_futures_result_and_does_not_block_the_connection(daemon):
    with daemon.client() as client:
        client.send("later:echo", {"text": "hi", "seconds": 0.3}, correlation_id="slow")
        client.send("system:health", correlation_id="fast")
        first, second = client.recv(), client.recv()
    assert first["correlation_id"] == "fast"
    assert second["correlation_id"] == "slow" and second["type"] == "reply"
    assert second["data"] == {"echo": "hi"}


def test_a_future_failing_with_ksi_error_answers_that_code(daemon):
    reply = daemon.request("later:refuse")
    assert reply["error"] == {"code": "conflict", "message": "refused later",
                              "details": {"why": "asked to"}}


def test_a_future_past_the_deadline_answers_timeout_once(daemon):
    with daemon.client() as client:
        client.send("later:never", correlation_id="never")
        reply = client.recv()
        assert reply["correlation_id"] == "never" and reply["error"]["code"] == "timeout"
        # Exactly one reply: the next line on the connection is the next request's.
        client.send("system:health", correlation_id="after")
        assert client.recv()["correlation_id"] == "after"
    metrics = daemon.request("system:metrics")["data"]
    assert metrics["queues"]["in_flight_requests"] == 0
    assert metrics["events"]["later:never"]["errors"] == 1


def test_an_owed_reply_never_settled_answers_timeout_once_past_its_deadline(daemon):
    with daemon.client() as client:
        client.send("later:owed_forever", correlation_id="owed")
        reply = client.recv()
        assert reply["correlation_id"] == "owed" and reply["error"]["code"] == "timeout"
        assert "within 0.3 s" in reply["error"]["message"]
        client.send("system:health", correlation_id="after")
        assert client.recv()["correlation_id"] == "after"
    assert daemon.request("system:metrics")["data"]["queues"]["in_flight_requests"] == 0


def test_emit_awaits_the_future_of_a_plain_handler(daemon):
    assert daemon.request("later:ask")["data"] == {"asked": {"echo": "through emit"}}


def test_a_half_closed_client_still_gets_the_futures_reply(daemon):
    import socket
    with daemon.socket_client() as client:
        client.send("later:echo", {"text": "bye", "seconds": 0.2}, correlation_id="late")
        client.sock.shutdown(socket.SHUT_WR)
        assert client.recv()["data"] == {"echo": "bye"}
        assert client.sock.recv(10) == b""
