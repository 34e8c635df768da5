"""The wire contract over a real socket: one coded reply per request line, connection kept."""
from __future__ import annotations

import os
import socket
import stat
import time

import orjson
import pytest

from conftest import LineClient, module_daemon, open_to_another_uid, rss_bytes

MiB = 1024 * 1024


@pytest.fixture(scope="module")
def framing_daemon():
    """One daemon process for the tests of the transport's framing: each uses a connection of
    its own and leaves nothing behind (no state, no subscription, nothing in the history that
    another reads)."""
    with module_daemon({}, "ksi-proto-") as daemon:
        yield daemon


@pytest.mark.daemon("inprocess")
def test_valid_request_gets_one_reply_with_its_correlation_id(daemon):
    with daemon.client() as client:
        reply = client.request("system:health", correlation_id="c-1")
        assert reply["type"] == "reply"
        assert reply["event"] == "system:health"
        assert reply["correlation_id"] == "c-1"
        assert reply["data"]["status"] == "healthy"
        assert reply["data"]["pid"] == daemon.proc.pid
        assert isinstance(reply["timestamp"], float)
        assert "error" not in reply


@pytest.mark.daemon("inprocess")
def test_missing_correlation_id_is_generated(daemon):
    reply = daemon.request("system:health")
    assert isinstance(reply["correlation_id"], str) and reply["correlation_id"]


@pytest.mark.daemon("inprocess")
@pytest.mark.parametrize("payload, code, event", [
    (b'{"event": "system:nosuch"}', "unknown_event", "system:nosuch"),
    (b'{"event": "system:health"', "invalid_json", None),
    (b'\xff\xfe{"event": "system:health"}', "invalid_json", None),
    (b'{"data": {}}', "invalid_request", None),
    (b'{"event": "NotAnEvent"}', "invalid_request", None),
    (b'{"event": 42}', "invalid_request", None),
    (b'[1, 2, 3]', "invalid_json", None),
    (b'"just a string"', "invalid_json", None),
    (b'{"event": "system:health", "data": [1]}', "invalid_request", "system:health"),
    (b'{"event": "system:health", "correlation_id": 7}', "invalid_request", None),
    (b'{"event": "system:help", "data": {}}', "validation_error", "system:help"),
    (b'{"event": "system:event_history", "data": {"limit": "lots"}}', "validation_error",
     "system:event_history"),
])
def test_bad_lines_get_one_coded_reply_and_the_connection_stays_usable(daemon, payload, code,
                                                                        event):
    with daemon.client() as client:
        client.send_raw(payload + b"\n")
        reply = client.recv()
        assert reply["type"] == "reply"
        assert reply["error"]["code"] == code, reply
        assert reply["error"]["message"]
        assert reply["event"] == event
        assert "data" not in reply
        assert client.request("system:health", correlation_id="after")["correlation_id"] == "after"


@pytest.mark.daemon("inprocess")
def test_unknown_event_suggests_close_names(daemon):
    reply = daemon.request("system:helth")
    assert reply["error"]["code"] == "unknown_event"
    assert "system:health" in reply["error"]["details"]["suggestions"]


@pytest.mark.daemon("inprocess")
def test_validation_error_lists_failing_fields(daemon):
    reply = daemon.request("system:subscribe", {"patterns": "not-a-list"})
    assert reply["error"]["code"] == "validation_error"
    assert reply["error"]["details"][0]["loc"] == ["patterns"]


@pytest.mark.daemon("inprocess")
def test_correlation_id_of_a_bad_envelope_is_kept_when_readable(daemon):
    with daemon.client() as client:
        client.send_raw(b'{"event": "Bad Name", "correlation_id": "keep-me"}\n')
        assert client.recv()["correlation_id"] == "keep-me"


def test_oversized_line_is_refused_and_the_rest_of_it_discarded(framing_daemon):
    with framing_daemon.client(timeout=30) as client:
        big = b'{"event": "system:health", "data": {"x": "' + b"a" * (MiB + 10) + b'"}}\n'
        client.send_raw(big)
        reply = client.recv()
        assert reply["error"]["code"] == "payload_too_large"
        assert client.request("system:health", correlation_id="next")["correlation_id"] == "next"


def test_oversized_line_sent_in_pieces_is_refused_once(framing_daemon):
    with framing_daemon.client(timeout=30) as client:
        client.send_raw(b'{"event": "system:health", "data": {"x": "')
        for _ in range(20):
            client.send_raw(b"b" * (128 * 1024))
            time.sleep(0.005)
        client.send_raw(b'"}}\n')
        assert client.recv()["error"]["code"] == "payload_too_large"
        assert client.request("system:health", correlation_id="ok")["correlation_id"] == "ok"


def test_line_just_under_the_limit_is_accepted(framing_daemon):
    with framing_daemon.client(timeout=30) as client:
        padding = MiB - 200
        line = orjson.dumps({"event": "system:event_history",
                             "data": {"limit": 1, "pattern": "x" * padding}})
        assert len(line) < MiB
        reply = client.request("system:event_history", {"limit": 1, "pattern": "x" * padding})
        assert reply["data"]["count"] == 0


def test_blank_lines_get_no_reply(framing_daemon):
    with framing_daemon.client() as client:
        client.send_raw(b"\n  \n\r\n")
        assert client.request("system:health", correlation_id="x")["correlation_id"] == "x"


def test_two_thousand_pipelined_requests_are_all_answered(framing_daemon):
    with framing_daemon.client(timeout=30) as client:
        payload = b"".join(orjson.dumps({"event": "system:health", "correlation_id": f"p{i}"})
                           + b"\n" for i in range(2000))
        client.send_raw(payload)
        seen = [client.recv()["correlation_id"] for _ in range(2000)]
        assert sorted(seen) == sorted(f"p{i}" for i in range(2000))
        assert len(set(seen)) == 2000


def test_replies_never_contain_raw_newlines(framing_daemon):
    with framing_daemon.client() as client:
        client.send_raw(orjson.dumps({"event": "system:unknown\nthing"}) + b"\n")
        raw = b""
        while not raw.endswith(b"\n"):
            raw += client.sock.recv(65536)
        assert raw.count(b"\n") == 1


@pytest.mark.daemon("inprocess")
def test_subscriber_sees_another_clients_events(daemon):
    with daemon.client() as watcher, daemon.client() as actor:
        assert watcher.request("system:subscribe", {"patterns": ["system:h*"]})["data"] == \
            {"patterns": ["system:h*"]}
        actor.request("system:health", correlation_id="from-actor")
        push = watcher.recv()
        assert push["type"] == "event"
        assert push["event"] == "system:health"
        assert push["correlation_id"] == "from-actor"
        actor.request("system:plugins")  # does not match the pattern
        actor.request("system:health", correlation_id="second")
        assert watcher.recv()["correlation_id"] == "second"


@pytest.mark.daemon("inprocess")
def test_unsubscribe_stops_pushes(daemon):
    with daemon.client() as watcher, daemon.client() as actor:
        watcher.request("system:subscribe", {"patterns": ["*"]})
        assert watcher.request("system:unsubscribe", {})["data"] == {"patterns": []}
        actor.request("system:health")
        assert watcher.request("system:health", correlation_id="mine")["correlation_id"] == "mine"


def test_subscriber_that_never_reads_neither_stalls_others_nor_grows_memory(daemon_factory):
    # completion is off: its background litellm import would dwarf what is measured here
    daemon = daemon_factory({"daemon": {"output_buffer_bytes": 256 * 1024,
                                        "slow_consumer_grace_s": 0.5},
                             "plugins": {"completion": {"enabled": False}}})
    sleeper = daemon.client()
    sleeper.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sleeper.request("system:subscribe", {"patterns": ["*"]})
    baseline = rss_bytes(daemon.proc.pid)
    big = "x" * 8000
    with daemon.client(timeout=10) as busy:
        started = time.monotonic()
        for i in range(3000):  # each request is pushed (8 KB) to the sleeping subscriber
            reply = busy.request("system:event_history",
                                 {"limit": 0, "pattern": big}, correlation_id=f"b{i}")
            assert reply["correlation_id"] == f"b{i}"
        assert time.monotonic() - started < 60
        metrics = busy.request("system:metrics")["data"]
    assert metrics["queues"]["pushes_dropped"] > 0 or metrics["connections"] == 1
    growth = rss_bytes(daemon.proc.pid) - baseline
    assert growth < 20 * MiB, f"daemon grew by {growth} bytes"
    time.sleep(1.0)
    with daemon.client() as probe:
        assert probe.request("system:health")["data"]["connections"] == 1  # sleeper dropped
    sleeper.close()


def test_socket_is_owner_only_and_its_directory_0700(daemon):
    assert stat.S_IMODE(os.stat(daemon.socket_path).st_mode) == 0o600
    assert stat.S_ISSOCK(os.stat(daemon.socket_path).st_mode)
    assert stat.S_IMODE(os.stat(daemon.socket_path.parent).st_mode) == 0o700


def test_peer_not_in_allow_list_is_refused(daemon, tmp_path):
    open_to_another_uid(daemon)
    pid = os.fork()
    if pid == 0:  # child: become nobody and try to talk
        code = 1
        try:
            os.setgid(65534)
            os.setuid(65534)
            client = LineClient(daemon.socket_path, timeout=5)
            # The refusal comes unasked, and the daemon closes right after it: a request sent
            # now could meet the closed socket (EPIPE), so the child only reads.
            reply = client.recv()
            code = 0 if reply["error"]["code"] == "forbidden" else 3
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0
    assert daemon.request("system:health")["data"]["status"] == "healthy"
