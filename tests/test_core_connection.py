"""The connection contract and the in-memory connection that drives a Router in-process."""
from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from ksi_daemon.core.connection import Connection
from ksi_daemon.core.memory_connection import MemoryConnection
from ksi_daemon.core.router import Handler, Router
from ksi_daemon.plugins.transport_unix.connection import Connection as UnixConnection


def build_router() -> Router:
    router = Router()

    def hello(data):
        return {"hello": data.get("name", "world")}

    async def slow(data):
        await asyncio.sleep(0.01)
        return {"slept": True}

    def later(data, ctx):
        reply = ctx.reply_later()
        asyncio.get_running_loop().call_soon(reply.set_result, {"later": True})
        return reply

    def pushes(data, ctx):
        ctx.push("test:pushed", {"n": 1})
        return {}

    for event, func in (("test:hello", hello), ("test:slow", slow), ("test:later", later),
                        ("test:push", pushes)):
        router.add_handler(Handler(event, func, plugin=None))
    router.seal()
    return router


def test_both_connections_implement_the_contract():
    router = Router()
    assert isinstance(MemoryConnection(router), Connection)
    unix = UnixConnection(router, {"max_line_bytes": 1024, "output_buffer_bytes": 65536,
                                   "slow_consumer_grace_s": 1.0}, set(), set())
    assert isinstance(unix, Connection)


def test_a_memory_connection_is_registered_and_identifies_this_process():
    router = Router()
    conn = MemoryConnection(router)
    assert conn in router.connections
    assert (conn.peer_pid, conn.peer_uid) == (os.getpid(), os.getuid())
    conn.close()
    assert conn not in router.connections


async def test_replies_of_every_kind_of_handler_arrive_decoded():
    conn = MemoryConnection(build_router())
    assert (await conn.ask("test:hello", {"name": "Ada"}))["data"] == {"hello": "Ada"}
    assert (await conn.ask("test:slow"))["data"] == {"slept": True}
    assert (await conn.ask("test:later"))["data"] == {"later": True}
    reply = await conn.ask("test:push")
    assert reply["data"] == {} and conn.pushes[-1]["event"] == "test:pushed"
    assert conn.pushes[-1]["correlation_id"] == reply["correlation_id"]
    # the push made while answering waited for the reply (held_pushes.py)
    assert [m["type"] for m in conn.received] == ["reply"] * 4 + ["event"]
    assert len(conn.lines) == len(conn.received) and conn.pending == 0


async def test_a_raw_line_gets_its_coded_error():
    conn = MemoryConnection(build_router())
    conn.send_line(b'{"event": "test:hello"')
    assert conn.replies[-1]["error"]["code"] == "invalid_json"
    cid = conn.request("test:nosuch")
    assert (await conn.reply_to(cid))["error"]["code"] == "unknown_event"


async def test_eof_closes_once_the_owed_replies_are_out():
    conn = MemoryConnection(build_router())
    cid = conn.request("test:slow")
    conn.eof()
    assert not conn.closed and conn.pending == 1
    await conn.reply_to(cid)
    assert conn.closed and conn.pending == 0


async def test_waiting_for_a_reply_that_never_comes_times_out():
    conn = MemoryConnection(build_router())
    with pytest.raises(asyncio.TimeoutError):
        await conn.reply_to("nobody-sent-this", timeout=0.01)


def test_context_and_the_reply_path_do_not_import_the_router():
    # The old circle: router.py imported context.py, which needed the router's internals.
    import subprocess
    import sys
    code = ("import sys, ksi_daemon.core.context, ksi_daemon.core.reply; "
            "sys.exit('ksi_daemon.core.router' in sys.modules)")
    root = Path(__file__).resolve().parent.parent  # this tree's ksi_daemon, not an installed one
    assert subprocess.run([sys.executable, "-c", code], cwd=root).returncode == 0
