"""ksi_client against a real daemon over its real socket: replies, errors, pushes, failures.

The daemon runs in this process (tests/inprocess.py) with its real Unix transport, so every
byte still crosses a real socket; the tests of a daemon killed or signalled use a process.
"""
from __future__ import annotations

import asyncio
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from ksi_client import (Event, EventClient, KSIConflictError, KSIConnectionError, KSIError,
                        KSINotFoundError, KSIStorageError, KSITimeoutError, KSIUnavailableError,
                        KSIUnknownEventError, KSIValidationError, SyncEventClient,
                        error_from_reply, find_socket_path)
from ksi_daemon.protocol import ERROR_CODES

pytestmark = pytest.mark.daemon("inprocess")
ROOT = Path(__file__).resolve().parent.parent

WAIT_S = 10  # a bound for waits that succeed in milliseconds; only reached when broken

PROBE_PLUGIN = '''
import asyncio

from ksi_daemon.event_system import event_handler
from ksi_daemon.protocol import KSIError

PLUGIN_METADATA = {"name": "client_probe"}


@event_handler("probe:echo")
async def echo(data):
    await asyncio.sleep(data.get("delay", 0))
    return {"echo": data["value"]}


@event_handler("probe:pushes")
def pushes(data, ctx):
    for index in range(data["count"]):
        ctx.push("probe:progress", {"index": index})
    return {"pushed": data["count"]}


@event_handler("probe:slow", timeout=None)
async def slow(data):
    await asyncio.sleep(data.get("seconds", 60))
    return {"done": True}


@event_handler("probe:refuse")
def refuse(data):
    raise KSIError("conflict", "version mismatch", {"expected": 3})


@event_handler("probe:big")
def big(data):
    return {"text": "x" * data["size"]}
'''


@pytest.fixture
def probe_daemon(daemon_factory, workdir):
    """A real daemon with a small plugin whose handlers wait, echo, push and refuse."""
    plugin_dir = workdir / "probe_plugins"
    plugin_dir.mkdir()
    (plugin_dir / "client_probe.py").write_text(PROBE_PLUGIN)
    return daemon_factory({"daemon": {"plugin_dirs": [str(plugin_dir)],
                                      "shutdown_timeout": 0.3}})


async def wait_for(condition, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


# ---- requests and replies -------------------------------------------------------------------

async def test_emit_returns_the_reply_data(daemon):
    async with EventClient(socket_path=daemon.socket_path) as client:
        health = await client.emit("system:health")
        assert health["status"] == "healthy"
        assert health["pid"] == daemon.proc.pid
        history = await client.emit("system:event_history", {"limit": 5}, timeout=5)
        assert "system:health" in [entry["event"] for entry in history["events"]]


async def test_unknown_event_raises_its_code_with_suggestions(daemon):
    async with EventClient(socket_path=daemon.socket_path) as client:
        with pytest.raises(KSIUnknownEventError) as caught:
            await client.emit("system:helth")
        assert isinstance(caught.value, KSIError)
        assert caught.value.code == "unknown_event"
        assert "system:health" in caught.value.details["suggestions"]
        assert (await client.emit("system:health"))["status"] == "healthy"  # still usable


async def test_schema_failures_raise_validation_errors_naming_the_field(daemon):
    async with EventClient(socket_path=daemon.socket_path) as client:
        with pytest.raises(KSIValidationError) as caught:
            await client.emit("system:event_history", {"limit": -1})
        assert caught.value.code == "validation_error"
        assert caught.value.details[0]["loc"] == ["limit"]
        with pytest.raises(KSIValidationError) as caught:
            await client.emit("system:help", {})
        assert caught.value.details[0]["loc"] == ["event"]


async def test_other_codes_map_to_their_classes(probe_daemon):
    async with EventClient(socket_path=probe_daemon.socket_path) as client:
        with pytest.raises(KSINotFoundError) as caught:
            await client.emit("system:help", {"event": "no:such"})
        assert caught.value.code == "not_found"
        with pytest.raises(KSIConflictError) as caught:
            await client.emit("probe:refuse")
        assert (caught.value.code, caught.value.details) == ("conflict", {"expected": 3})
        with pytest.raises(KSIError) as caught:
            await client.emit("Not An Event")
        assert caught.value.code == "invalid_request"


def test_every_protocol_code_gives_an_error_with_that_code():
    for code in ERROR_CODES:
        error = error_from_reply({"code": code, "message": "m", "details": {"k": 1}})
        assert isinstance(error, KSIError)
        assert (error.code, error.message, error.details) == (code, "m", {"k": 1})
        copy = pickle.loads(pickle.dumps(error))
        assert (type(copy), copy.code, copy.details) == (type(error), code, {"k": 1})
    assert isinstance(error_from_reply({"code": "timeout", "message": "m"}), KSITimeoutError)
    assert isinstance(error_from_reply({"code": "unavailable", "message": "m"}),
                      KSIUnavailableError)
    full = error_from_reply({"code": "storage_error", "message": "m",
                             "details": {"database": "state", "retry_after_s": 1.0}})
    assert isinstance(full, KSIStorageError) and full.retry_after_s == 1.0
    assert error_from_reply({"code": "storage_error", "message": "m"}).retry_after_s is None


async def test_many_requests_in_flight_on_one_connection_get_their_own_replies(probe_daemon):
    async with EventClient(socket_path=probe_daemon.socket_path) as client:
        async def echo(i: int):
            # Early requests wait longest, so replies come back in another order.
            return await client.emit("probe:echo", {"value": i, "delay": (4 - i % 5) * 0.01})

        async def unknown(i: int):
            with pytest.raises(KSIUnknownEventError) as caught:
                await client.emit(f"probe:missing_{i}")
            return caught.value.message

        replies = await asyncio.gather(*(echo(i) for i in range(400)),
                                       *(unknown(i) for i in range(100)))
        assert [reply["echo"] for reply in replies[:400]] == list(range(400))
        for i, message in enumerate(replies[400:]):
            assert f"probe:missing_{i}" in message and f"probe:missing_{i}0" not in message
        health = await client.emit("system:health")
        assert health["connections"] == 1


async def test_large_replies_arrive_whole_and_oversized_ones_end_the_connection(probe_daemon):
    async with EventClient(socket_path=probe_daemon.socket_path) as client:
        reply = await client.emit("probe:big", {"size": 3 * 1024 * 1024})
        assert len(reply["text"]) == 3 * 1024 * 1024
    async with EventClient(socket_path=probe_daemon.socket_path,
                           max_line_bytes=64 * 1024) as client:
        with pytest.raises(KSIConnectionError, match="longer than 65536 bytes"):
            await client.emit("probe:big", {"size": 100 * 1024})
        with pytest.raises(KSIConnectionError):
            await client.emit("system:health")


async def test_a_request_over_the_daemons_line_limit_gets_its_own_error(probe_daemon):
    # The daemon cannot read the correlation id of a line it discards; the answer still
    # reaches the request that caused it, and only that one.
    async with EventClient(socket_path=probe_daemon.socket_path) as client:
        small_but_long = client.emit("probe:echo", {"value": "y" * (300 * 1024), "delay": 0.2})
        too_long = client.emit("probe:echo", {"value": "x" * (2 * 1024 * 1024)}, timeout=5)
        results = await asyncio.gather(small_but_long, too_long, client.emit("system:health"),
                                       return_exceptions=True)
        assert len(results[0]["echo"]) == 300 * 1024
        assert isinstance(results[1], KSIError) and results[1].code == "payload_too_large"
        assert results[2]["status"] == "healthy"


async def test_non_json_data_is_refused_before_sending(daemon):
    async with EventClient(socket_path=daemon.socket_path) as client:
        with pytest.raises(TypeError):
            await client.emit("system:health", {"when": object()})
        with pytest.raises(ValueError, match="every call has a timeout"):
            await client.emit("system:health", timeout=None)
        assert (await client.emit("system:health"))["status"] == "healthy"


# ---- finding the daemon ----------------------------------------------------------------------

async def test_socket_found_through_ksi_socket_path(daemon, monkeypatch, tmp_path):
    monkeypatch.setenv("KSI_SOCKET_PATH", str(daemon.socket_path))
    monkeypatch.setenv("KSI_VAR_DIR", str(tmp_path))  # KSI_SOCKET_PATH wins over it
    async with EventClient() as client:
        assert client.socket_path == daemon.socket_path
        assert (await client.emit("system:health"))["pid"] == daemon.proc.pid


async def test_socket_found_through_ksi_var_dir(daemon, monkeypatch):
    monkeypatch.delenv("KSI_SOCKET_PATH", raising=False)
    monkeypatch.setenv("KSI_VAR_DIR", str(daemon.var_dir))
    async with EventClient() as client:
        assert (await client.emit("system:health"))["pid"] == daemon.proc.pid


def test_socket_found_in_the_projects_var_whatever_the_working_directory(monkeypatch):
    # The daemon's default var/ is the source tree's (tests/test_newcomer_paths.py runs one).
    monkeypatch.chdir("/")
    assert find_socket_path({}) == ROOT / "var" / "run" / "daemon.sock"


async def test_no_daemon_says_where_it_looked_and_how_to_start_one(monkeypatch, tmp_path):
    monkeypatch.delenv("KSI_SOCKET_PATH", raising=False)
    monkeypatch.setenv("KSI_VAR_DIR", str(tmp_path))
    with pytest.raises(KSIConnectionError) as caught:
        async with EventClient():
            pass
    message = str(caught.value)
    assert f"no KSI daemon is listening at {tmp_path / 'run' / 'daemon.sock'}" in message
    assert "./daemon_control.py start" in message
    assert caught.value.code == "connection_error"
    with pytest.raises(KSIConnectionError, match="daemon_control.py start"):
        await EventClient(socket_path=tmp_path / "elsewhere.sock").emit("system:health")


# ---- timeouts and lost connections ----------------------------------------------------------

async def test_client_side_timeout_against_a_server_that_never_answers(workdir):
    heard = []

    async def accept_and_stay_silent(reader, writer):
        heard.append(await reader.readline())

    path = workdir / "silent.sock"
    server = await asyncio.start_unix_server(accept_and_stay_silent, path=str(path))
    try:
        async with EventClient(socket_path=path) as client:
            with pytest.raises(KSITimeoutError) as caught:
                await client.emit("system:health", timeout=0.2)
            assert caught.value.code == "timeout"
            assert caught.value.details["side"] == "client"
            assert b'"event":"system:health"' in heard[0]
    finally:
        server.close()


async def test_a_late_reply_after_a_client_timeout_is_ignored(daemon):
    async with EventClient(socket_path=daemon.socket_path) as client:
        with pytest.raises(KSITimeoutError):
            await client.emit("system:health", timeout=1e-6)
        for _ in range(3):
            assert (await client.emit("system:health"))["status"] == "healthy"


@pytest.mark.daemon("process")
async def test_daemon_killed_while_requests_pending(probe_daemon):
    client = EventClient(socket_path=probe_daemon.socket_path)
    await client.connect()
    stream = client.events("*")
    pending = [asyncio.create_task(client.emit("probe:slow")) for _ in range(3)]
    await client.emit("system:health")  # requests start in order: the slow ones are running
    probe_daemon.proc.send_signal(signal.SIGKILL)
    probe_daemon.proc.wait()
    results = await asyncio.wait_for(asyncio.gather(*pending, return_exceptions=True), WAIT_S)
    assert all(isinstance(r, KSIConnectionError) for r in results), results
    assert "was lost" in str(results[0])
    with pytest.raises(KSIConnectionError):
        await asyncio.wait_for(anext(stream), WAIT_S)
    with pytest.raises(KSIConnectionError, match="was lost"):
        await client.emit("system:health")
    await client.close()


@pytest.mark.daemon("process")
async def test_daemon_stopping_gracefully_answers_or_fails_every_pending_call(probe_daemon):
    client = EventClient(socket_path=probe_daemon.socket_path)
    await client.connect()
    stream = client.events("*")
    slow = asyncio.create_task(client.emit("probe:slow"))
    await client.emit("system:health")
    probe_daemon.proc.send_signal(signal.SIGTERM)
    with pytest.raises(KSIUnavailableError):  # cancelled at the shutdown deadline, and told so
        await asyncio.wait_for(slow, WAIT_S)
    with pytest.raises(KSIConnectionError):
        await asyncio.wait_for(anext(stream), WAIT_S)
    with pytest.raises(KSIConnectionError):
        await client.emit("system:health")
    assert probe_daemon.wait(WAIT_S) == 0
    await client.close()


async def test_closing_the_client_fails_waiting_calls_and_ends_streams(probe_daemon):
    client = EventClient(socket_path=probe_daemon.socket_path)
    await client.connect()
    stream = client.events("*")
    slow = asyncio.create_task(client.emit("probe:slow"))
    await client.emit("system:health")
    await client.close()
    with pytest.raises(KSIConnectionError, match="closed"):
        await slow
    assert [event async for event in stream] == []
    with pytest.raises(KSIConnectionError, match="closed"):
        await client.emit("system:health")


# ---- subscriptions and pushes ---------------------------------------------------------------

async def test_subscription_handlers_see_another_clients_events(daemon):
    seen_sync, seen_async = [], []

    async def record_later(event: Event):
        await asyncio.sleep(0)
        seen_async.append(event)

    async with EventClient(socket_path=daemon.socket_path) as watcher, \
            EventClient(socket_path=daemon.socket_path) as other:
        await watcher.subscribe("system:*", seen_sync.append)
        await watcher.subscribe("system:health", record_later)
        await other.emit("system:health", correlation_id="from-other")
        await wait_for(lambda: seen_sync and seen_async, "both handlers")
        event = seen_sync[0]
        assert (event.event, event.correlation_id) == ("system:health", "from-other")
        assert isinstance(event.timestamp, float)
        assert seen_async[0].correlation_id == "from-other"


async def test_unsubscribe_stops_pushes_only_when_no_subscription_needs_them(daemon):
    seen_a, seen_b = [], []
    async with EventClient(socket_path=daemon.socket_path) as watcher, \
            EventClient(socket_path=daemon.socket_path) as other:
        first = await watcher.subscribe("system:*", seen_a.append)
        await watcher.subscribe("system:*", seen_b.append)
        assert await watcher.unsubscribe(first) == ["system:*"]
        await other.emit("system:health")
        await wait_for(lambda: seen_b, "the remaining handler")
        assert seen_a == []
        assert await watcher.unsubscribe("system:*") == []
        await other.emit("system:health")
        # A push caused by `other` before our next request would reach us before its reply.
        await watcher.emit("system:health")
        assert len(seen_b) == 1


async def test_events_iterator_gets_pushes_of_its_pattern(daemon):
    async with EventClient(socket_path=daemon.socket_path) as watcher, \
            EventClient(socket_path=daemon.socket_path) as other:
        await watcher.subscribe("system:*")
        stream = watcher.events("system:*")
        received = []

        async def read_two():
            async for event in stream:
                received.append(event)
                if len(received) == 2:
                    break
        reader = asyncio.create_task(read_two())
        await other.emit("system:health", correlation_id="h-1")
        await other.emit("system:plugins", correlation_id="p-1")
        await asyncio.wait_for(reader, WAIT_S)
        assert [(e.event, e.correlation_id) for e in received] == [
            ("system:health", "h-1"), ("system:plugins", "p-1")]


async def test_pushes_caused_by_own_requests_arrive_without_subscribing(probe_daemon):
    async with EventClient(socket_path=probe_daemon.socket_path) as client:
        mine = client.events("probe:*", correlation_id="job-1")
        everything = client.events("*")
        await client.emit("probe:pushes", {"count": 3}, correlation_id="job-1")
        await client.emit("probe:pushes", {"count": 2}, correlation_id="job-2")
        assert [(await mine.get(WAIT_S)).data["index"] for _ in range(3)] == [0, 1, 2]
        with pytest.raises(KSITimeoutError):
            await mine.get(timeout=0.05)  # job-2's pushes are not for this stream
        got = [(await everything.get(WAIT_S)).correlation_id for _ in range(5)]
        assert got == ["job-1"] * 3 + ["job-2"] * 2


async def test_a_full_events_queue_drops_the_oldest_and_counts(probe_daemon):
    async with EventClient(socket_path=probe_daemon.socket_path) as client:
        async with client.events("probe:progress", max_queue=5) as stream:
            await client.emit("probe:pushes", {"count": 20})
            assert stream.dropped == 15
            assert [(await stream.get(WAIT_S)).data["index"] for _ in range(5)] == \
                list(range(15, 20))


# ---- the synchronous face -------------------------------------------------------------------

def test_sync_client_emits_and_raises_the_same_errors(daemon):
    with SyncEventClient(socket_path=daemon.socket_path) as client:
        assert client.emit("system:health")["pid"] == daemon.proc.pid
        with pytest.raises(KSIUnknownEventError) as caught:
            client.emit("system:helth")
        assert "system:health" in caught.value.details["suggestions"]
        with pytest.raises(KSITimeoutError):
            client.emit("system:health", timeout=1e-6)
        assert client.emit("system:health")["status"] == "healthy"
    with pytest.raises(KSIConnectionError, match="closed"):
        client.emit("system:health")


def test_sync_client_subscriptions_and_event_iteration(daemon):
    handled = threading.Event()
    seen = []
    misuse = []

    def handler(event):
        seen.append(event)
        try:
            client.emit("system:health")
        except RuntimeError as exc:  # calling back in from its own thread would deadlock
            misuse.append(exc)
        handled.set()

    with SyncEventClient(socket_path=daemon.socket_path) as client, \
            SyncEventClient(socket_path=daemon.socket_path) as other:
        client.subscribe("system:health", handler)
        stream = client.events("system:health")
        other.emit("system:health", correlation_id="sync-1")
        assert handled.wait(WAIT_S)
        assert seen[0].correlation_id == "sync-1"
        assert misuse and "own subscription handlers" in str(misuse[0])
        assert next(stream).correlation_id == "sync-1"
        with pytest.raises(KSITimeoutError):
            stream.get(timeout=0.05)
    assert list(stream) == []  # closing the client ends the iteration


def test_sync_client_without_daemon_explains_and_leaves_no_thread(tmp_path):
    before = threading.active_count()
    with pytest.raises(KSIConnectionError, match="daemon_control.py start"):
        with SyncEventClient(socket_path=tmp_path / "none.sock"):
            pass
    assert threading.active_count() == before


# ---- staying light --------------------------------------------------------------------------

def test_importing_the_client_loads_nothing_heavy():
    code = ("import sys, ksi_client; heavy = [m for m in sys.modules if m.split('.')[0] in "
            "('ksi_daemon', 'litellm', 'pydantic', 'structlog', 'pluggy')]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ}, timeout=30, check=True).stdout
    assert out.strip() == "[]"
