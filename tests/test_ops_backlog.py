"""Promise 7: a thousand clients connecting at once are all served (the listen backlog, and the
client trying again while it is full)."""
from __future__ import annotations

import asyncio
import contextlib
import resource
import signal
import socket

import orjson
import pytest

from ksi_client import KSIConnectionError
from conftest import DaemonProcess
from ksi_client.event_client import EventClient

BURST = 1000


async def health_over_a_new_client(socket_path: str) -> dict:
    async with EventClient(socket_path, timeout=30) as client:
        return await client.emit("system:health")


async def health_for_each_of(socket_path: str, count: int) -> list:
    return await asyncio.gather(*(health_over_a_new_client(socket_path) for _ in range(count)),
                                return_exceptions=True)


@contextlib.contextmanager
def soft_file_limit(soft: int):
    """The usual desktop limit of 1024 open files, for a process started inside."""
    before = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, before[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, before)


@pytest.fixture
def daemon_with_the_usual_file_limit(workdir):
    with soft_file_limit(1024):
        daemon = DaemonProcess(workdir).start()
    yield daemon
    daemon.stop()


def test_a_thousand_clients_connecting_at_once_each_get_their_health_reply(
        daemon_with_the_usual_file_limit):
    daemon = daemon_with_the_usual_file_limit
    results = asyncio.run(health_for_each_of(str(daemon.socket_path), BURST))
    failures = [r for r in results if isinstance(r, BaseException)]
    assert not failures, f"{len(failures)} of {BURST} failed, e.g. {failures[0]!r}"
    assert all(r["status"] == "healthy" for r in results)


def test_the_default_backlog_queues_a_burst_of_a_thousand_while_the_daemon_is_busy(
        daemon_with_the_usual_file_limit):
    daemon = daemon_with_the_usual_file_limit
    # Stopped, the daemon accepts nothing: every connect of the burst must fit in the backlog.
    socks = []
    daemon.proc.send_signal(signal.SIGSTOP)
    try:
        for _ in range(BURST):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.setblocking(False)
            socks.append(sock)
            sock.connect(str(daemon.socket_path))  # BlockingIOError (EAGAIN) if it is full
            sock.send(b'{"event": "system:health"}\n')
    finally:
        daemon.proc.send_signal(signal.SIGCONT)
    for sock in socks:
        sock.setblocking(True)
        sock.settimeout(30)
        reply = b""
        while not reply.endswith(b"\n"):
            reply += sock.recv(65536)
        assert orjson.loads(reply)["data"]["status"] == "healthy"
        sock.close()


def test_the_client_waits_out_a_full_backlog(daemon_factory):
    daemon = daemon_factory({"daemon": {"listen_backlog": 4}})
    results = asyncio.run(health_for_each_of(str(daemon.socket_path), 300))
    failures = [r for r in results if isinstance(r, BaseException)]
    assert not failures, f"{len(failures)} of 300 failed, e.g. {failures[0]!r}"


def test_a_backlog_that_stays_full_is_a_clear_error(workdir):
    path = str(workdir / "never-accepts.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(0)
    queued = []
    try:
        while True:  # fill the backlog of a listener that never accepts
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.setblocking(False)
            try:
                sock.connect(path)
            except BlockingIOError:
                sock.close()
                break
            queued.append(sock)

        async def connect():
            await EventClient(path, timeout=0.5).connect()
        with pytest.raises(KSIConnectionError, match="listen backlog stayed full"):
            asyncio.run(connect())
    finally:
        for sock in queued:
            sock.close()
        listener.close()


def test_a_backlog_above_the_kernel_cap_is_logged(daemon_factory):
    daemon = daemon_factory({"daemon": {"listen_backlog": 65535}})
    daemon.stop()
    records = [orjson.loads(line) for line in
               (daemon.var_dir / "logs" / "daemon.log").read_bytes().splitlines()]
    capped = [r for r in records if r["event"] == "listen_backlog_capped"]
    assert capped and capped[0]["configured"] == 65535
    assert capped[0]["somaxconn"] == int(open("/proc/sys/net/core/somaxconn").read())
