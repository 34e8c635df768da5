"""A request's reply is the first line carrying its correlation id (PROTOCOL.md §1).

A client that matches lines by correlation id takes the first one with its id for the reply, so
pushes caused by a request (its own `ctx.push`, events it emits that the client subscribed to,
a publish to a topic the publisher reads) wait until that reply is out. Read as raw lines from
the real socket, in arrival order. Pushes carrying other ids, and pushes to other connections,
are not held (the in-process tests at the end).
"""
from __future__ import annotations

import contextlib

import pytest

from conftest import LineClient, data_of
from inprocess import InProcessDaemon
from ksi_daemon.core.held_pushes import MAX_HELD
from ksi_daemon.core.protocol import CONFLICT, KSIError

pytestmark = pytest.mark.daemon("inprocess")


def lines_with(client: LineClient, cid: str, until_event: str | None = None,
               limit: int = 200) -> list[dict]:
    """Every line carrying `cid`, in arrival order, up to the push named `until_event` (or up
    to the reply when None)."""
    seen: list[dict] = []
    for _ in range(limit):
        message = client.recv()
        if message.get("correlation_id") != cid:
            continue
        seen.append(message)
        if until_event is None and message["type"] == "reply":
            return seen
        if message.get("event") == until_event and message["type"] == "event":
            return seen
    raise AssertionError(f"no {until_event or 'reply'} for {cid} within {limit} lines: {seen}")


def lines_of_each(client: LineClient, cids: list[str], until_event: str,
                  limit: int = 400) -> dict[str, list[dict]]:
    """`lines_with` for requests sent together: each id's lines, in arrival order, up to its
    push named `until_event` (replies of later requests may come before earlier pushes)."""
    seen: dict[str, list[dict]] = {cid: [] for cid in cids}
    waiting = set(cids)
    for _ in range(limit):
        message = client.recv()
        cid = message.get("correlation_id")
        if cid in seen:
            seen[cid].append(message)
            if message.get("event") == until_event and message["type"] == "event":
                waiting.discard(cid)
                if not waiting:
                    return seen
    raise AssertionError(f"not every {until_event} within {limit} lines: {seen}")


def assert_reply_first(seen: list[dict], event: str, push: str) -> None:
    kinds = [(m["type"], m.get("event")) for m in seen]
    assert kinds[0] == ("reply", event), kinds
    assert "error" not in seen[0], seen[0]
    assert ("event", push) in kinds[1:], kinds


def subscribed(daemon, patterns: list[str]) -> LineClient:
    client = daemon.socket_client(timeout=30)
    data_of(client.request("system:subscribe", {"patterns": patterns}))
    return client


def test_agent_spawn_replies_before_agent_spawned(daemon):
    with subscribed(daemon, ["agent:*"]) as client:
        client.send("agent:spawn", {"agent_id": "order-spawn"}, correlation_id="spawn-1")
        assert_reply_first(lines_with(client, "spawn-1", "agent:spawned"), "agent:spawn",
                           "agent:spawned")


def test_agent_terminate_and_restart_reply_before_their_pushes(daemon):
    with subscribed(daemon, ["agent:*"]) as client:
        data_of(client.request("agent:spawn", {"agent_id": "order-stop"}))
        client.send("agent:restart", {"agent_id": "order-stop"}, correlation_id="restart-1")
        assert_reply_first(lines_with(client, "restart-1", "agent:status"), "agent:restart",
                           "agent:status")
        client.send("agent:terminate", {"agent_id": "order-stop"}, correlation_id="stop-1")
        assert_reply_first(lines_with(client, "stop-1", "agent:terminated"),
                           "agent:terminate", "agent:terminated")


def test_orchestration_start_replies_before_its_pushes(daemon):
    with subscribed(daemon, ["agent:*", "orchestration:*"]) as client:
        client.send("orchestration:start", {"mode": "debate", "topic": "Tabs or spaces?",
                                            "rounds": 1}, correlation_id="orch-1")
        assert_reply_first(lines_with(client, "orch-1", "orchestration:finished"),
                           "orchestration:start", "orchestration:turn")


def test_publish_to_a_topic_the_publisher_reads_replies_first(daemon):
    with daemon.socket_client() as client:
        data_of(client.request("message:subscribe", {"topics": ["order:room"]}))
        for n in range(3):  # pipelined: each reply before its own delivery
            client.send("message:publish", {"topic": "order:room", "content": n},
                        correlation_id=f"pub-{n}")
        seen = lines_of_each(client, [f"pub-{n}" for n in range(3)], "message:received")
        for lines in seen.values():
            assert_reply_first(lines, "message:publish", "message:received")


def test_discover_marks_the_events_whose_pushes_stream_before_their_reply(daemon):
    with daemon.socket_client() as client:
        events = {e["event"]: e for e in data_of(client.request("system:discover"))["events"]}
    assert events["completion:request"]["streams"] is True
    assert "streams" not in events["completion:async"]  # its pushes follow its reply


def test_state_set_replies_before_state_changed(daemon):
    with subscribed(daemon, ["state:changed"]) as client:
        for n in range(3):
            client.send("state:set", {"key": "order", "value": n}, correlation_id=f"set-{n}")
        seen = lines_of_each(client, [f"set-{n}" for n in range(3)], "state:changed")
        for lines in seen.values():
            assert_reply_first(lines, "state:set", "state:changed")


# ---- in-process: an error reply, and what is never held ----------------------------------------

@contextlib.contextmanager
def replaced(daemon, event: str, wrap):
    """`event` answered by `wrap(the real handler function)` for the duration."""
    handler = daemon.router.client_handlers[event]
    real = handler.func
    handler.func = wrap(real)
    try:
        yield
    finally:
        handler.func = real


def publish_then(outcome):
    """message:publish as it is (its delivery pushed), then answered by `outcome(reply_later)`."""
    def wrap(publish):
        def handler(data, ctx):
            publish(data, ctx)
            return outcome(ctx.reply_later())
        return handler
    return wrap


async def test_held_pushes_follow_an_error_reply(tmp_path):
    async with InProcessDaemon(tmp_path) as daemon, daemon.connect() as client:
        data_of(await client.request("message:subscribe", {"topics": ["t"]}))

        def fail(reply):
            raise KSIError(CONFLICT, "published, then refused")
        with replaced(daemon, "message:publish", publish_then(fail)):
            client.send("message:publish", {"topic": "t", "content": 1}, correlation_id="err")
            first, second = await client.recv(), await client.recv()
        assert (first["type"], first["error"]["code"]) == ("reply", "conflict"), first
        assert (second["type"], second["correlation_id"]) == ("event", "err"), second


async def test_pushes_with_other_ids_and_to_other_connections_are_not_held(tmp_path):
    """While a request waits unanswered, its connection still gets every push carrying
    another id at once, and other connections get the waiting request's pushes at once."""
    async with InProcessDaemon(tmp_path) as daemon, \
            daemon.connect() as waiting, daemon.connect() as other:
        for client in (waiting, other):
            data_of(await client.request("message:subscribe", {"topics": ["t"]}))
        owed = []
        with replaced(daemon, "message:publish", publish_then(lambda r: owed.append(r) or r)):
            waiting.send("message:publish", {"topic": "t", "content": "held"},
                         correlation_id="slow")
        pushed = await other.recv()  # the other connection: not held
        assert (pushed["correlation_id"], pushed["data"]["content"]) == ("slow", "held")
        other.send("message:publish", {"topic": "t", "content": "free"}, correlation_id="fast")
        first = await waiting.recv()  # another id, on the waiting connection: not held
        assert (first["type"], first["correlation_id"]) == ("event", "fast"), first
        owed[0].set_result({"message_id": "m", "delivered": 2})
        assert [(m["type"], m["correlation_id"]) for m in
                (await waiting.recv(), await waiting.recv())] == \
            [("reply", "slow"), ("event", "slow")]


async def test_a_request_pushing_without_end_before_answering_is_bounded(tmp_path):
    """Past MAX_HELD lines the held pushes go out as they come: none lost, none reordered."""
    async with InProcessDaemon(tmp_path) as daemon, daemon.connect() as client:
        data_of(await client.request("message:subscribe", {"topics": ["t"]}))
        pushes = MAX_HELD + 5

        def flood(reply):
            for n in range(1, pushes):
                daemon.router.push("flood", {"n": n}, "many", client.connection)
            return {"done": True}
        with replaced(daemon, "message:publish", publish_then(flood)):
            client.send("message:publish", {"topic": "t", "content": 0}, correlation_id="many")
            lines = [await client.recv() for _ in range(pushes + 1)]
        assert client.connection.held == {}
        assert [m["type"] for m in lines] == ["event"] * pushes + ["reply"]
        assert [m["data"].get("n", 0) for m in lines[:pushes]] == list(range(pushes))
