"""The Unix transport's goodbyes (promise 12): a disconnected slow subscriber reads a coded
notice before EOF, the dropped pushes stay counted after it goes, and a refused peer that
already sent a request reads its `forbidden` line instead of a reset connection."""
from __future__ import annotations

import os
import socket
import time

import orjson
import pytest

from conftest import LineClient, exit_code_as_nobody, open_to_another_uid


def read_until_eof(sock: socket.socket) -> bytes:
    received = b""
    while True:
        chunk = sock.recv(1 << 16)
        if not chunk:
            return received
        received += chunk


def wait_for_connections(daemon, count: int, within_s: float = 5.0) -> None:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        with daemon.client() as probe:  # the probe counts itself
            if probe.request("system:health")["data"]["connections"] == count + 1:
                return
        time.sleep(0.05)
    raise AssertionError(f"connections never came down to {count}")


def test_a_slow_subscriber_reads_a_coded_notice_before_eof(daemon_factory):
    daemon = daemon_factory({"daemon": {"output_buffer_bytes": 64 * 1024,
                                        "slow_consumer_grace_s": 0.3},
                             "plugins": {"completion": {"enabled": False}}})
    sleeper = daemon.client(timeout=10)
    sleeper.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sleeper.request("system:subscribe", {"patterns": ["*"]})
    big = "x" * 8000
    with daemon.client() as busy:
        for i in range(100):  # each request is pushed (8 KB) to the sleeper, which does not read
            busy.request("system:event_history", {"limit": 0, "pattern": big})
    wait_for_connections(daemon, 0)  # the sleeper is gone for the daemon
    lines = read_until_eof(sleeper.sock).split(b"\n")
    sleeper.close()
    assert lines[-1] == b""  # every line ends: nothing cut off mid-line
    notice = orjson.loads(lines[-2])
    assert notice["type"] == "event" and notice["event"] == "system:disconnected", notice
    assert notice["data"]["code"] == "rate_limited" and notice["data"]["message"]
    assert notice["data"]["pushes_dropped"] > 0
    with daemon.client() as probe:
        queues = probe.request("system:metrics")["data"]["queues"]
    assert queues["pushes_dropped"] >= notice["data"]["pushes_dropped"]  # kept after it left


def refused_child(socket_path, send_first: bool) -> int:
    """Fork a child that connects as uid 65534 (nobody), maybe sends a request, then reads;
    its exit code says what it read (0: the forbidden line, then EOF; 4: a reset, as a client
    that reads to the end, like ksi_client, saw instead of the refusal)."""
    def child() -> int:
        client = LineClient(socket_path, timeout=5)
        try:
            if send_first:
                client.send("system:health", correlation_id="asked")
                time.sleep(0.2)  # the daemon has refused it by now, with the request unread
            reply = client.recv()
            assert read_until_eof(client.sock) == b""  # then a clean end, not a reset
            return 0 if reply["error"]["code"] == "forbidden" else 3
        except ConnectionResetError:
            return 4
    return exit_code_as_nobody(child)


@pytest.mark.parametrize("send_first", [True, False])
def test_a_refused_peer_reads_forbidden_even_after_sending_a_request(daemon, send_first):
    open_to_another_uid(daemon)
    assert refused_child(daemon.socket_path, send_first) == 0
    with daemon.client() as probe:
        assert probe.request("system:health")["data"]["connections"] == 1
