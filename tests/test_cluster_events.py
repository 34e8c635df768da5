"""Cluster mode, item 2 of issue 19: events and messages cross nodes.

A real nats-server (the `nats_server` fixture: loopback, JetStream, `sync_interval: always`)
and real daemon processes, each with its own var directory and socket.
"""
from __future__ import annotations

import signal
import socket
import threading
import time

import orjson
import pytest

import cluster_nodes
from cluster_nodes import CuttableProxy, wait_for
from conftest import DaemonProcess, data_of, error_of
from ksi_daemon.plugins.cluster import subjects
from ksi_daemon.plugins.cluster.event_bridge import event_name_of
from ksi_daemon.core.protocol import encode_push

WITHIN_S = 10.0  # generous bounds for what should take milliseconds
RETAINED = {"plugins": {"message": {"retention_per_topic": 100_000}}}


def start_node(workdir, nats_server, node_id: str) -> DaemonProcess:
    return cluster_nodes.start_node(workdir, nats_server, node_id, RETAINED)


def pushes(client, event: str, within: float = WITHIN_S, until=None) -> list[dict]:
    """The data of every `event` push until `until(data)` is true of one (included), or,
    without `until`, every one that arrives within `within`."""
    got, deadline = [], time.monotonic() + within
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            assert until is None, f"{event} never matched within {within} s: {got}"
            return got
        client.settimeout(left)
        try:
            message = client.recv()
        except (socket.timeout, TimeoutError):
            continue
        if message["type"] == "event" and message["event"] == event:
            got.append(message["data"])
            if until is not None and until(message["data"]):
                return got


@pytest.fixture
def two_nodes(workdir, nats_server):
    nodes = [start_node(workdir, nats_server, "node-a"), start_node(workdir, nats_server, "node-b")]
    yield nodes
    for node in nodes:
        node.stop()


# ---- messages ---------------------------------------------------------------------------------

def test_a_message_published_on_a_reaches_subscribers_on_both_nodes_exactly_once(two_nodes):
    a, b = two_nodes
    with a.client() as on_a, b.client() as on_b, a.client() as publisher:
        for client in (on_a, on_b):
            data_of(client.request("message:subscribe", {"topics": ["room:*"]}))
        reply = data_of(publisher.request("message:publish", {
            "topic": "room:lobby", "content": {"text": "hello"}, "sender": "alice"}))
        assert reply["delivered"] == 1  # the subscriber on node A; B's gets it from the stream
        data_of(publisher.request("message:publish", {"topic": "room:lobby",
                                                      "content": "end", "sender": "alice"}))
        for client in (on_a, on_b):
            got = pushes(client, "message:received", until=lambda m: m["content"] == "end")
            assert [m["content"] for m in got] == [{"text": "hello"}, "end"]
            assert got[0]["message_id"] == reply["message_id"] and got[0]["sender"] == "alice"
            assert pushes(client, "message:received", within=0.5) == []  # no second copy


def test_a_topics_retained_messages_replay_from_the_other_node(two_nodes):
    a, b = two_nodes
    with a.client() as publisher:
        ids = [data_of(publisher.request("message:publish", {
            "topic": "news:today", "content": i, "sender": "wire"}))["message_id"]
            for i in range(30)]
    history = data_of(b.request("message:history", {"topic": "news:today", "limit": 10}))
    assert [m["message_id"] for m in history["messages"]] == ids[-10:]
    assert [m["content"] for m in history["messages"]] == list(range(20, 30))
    assert history["count"] == 10
    assert data_of(b.request("message:history", {"topic": "news:other"}))["messages"] == []


def test_an_agent_on_b_gets_a_message_published_on_a_once_and_answers_on_its_topic(two_nodes):
    a, b = two_nodes
    with a.client(timeout=30) as room, b.client(timeout=30) as watcher:
        data_of(room.request("message:subscribe", {"topics": ["news"]}))
        data_of(watcher.request("system:subscribe", {"patterns": ["agent:inbox"]}))
        data_of(watcher.request("agent:spawn", {"agent_id": "reader", "topics": ["news"]}))
        published = data_of(room.request("message:publish", {
            "topic": "news", "content": "Rain tomorrow", "sender": "weather"}))
        handed = pushes(watcher, "agent:inbox", until=lambda m: m["sender"] == "weather")
        assert handed[-1]["message_id"] == published["message_id"]
        assert handed[-1]["agent_id"] == "reader"
        answer = pushes(room, "message:received", within=30,
                        until=lambda m: m["sender"] == "reader")[-1]
        assert "Rain tomorrow" in answer["content"]  # its answer, published on B, read on A
        wait_for(lambda: data_of(watcher.request("agent:info", {"agent_id": "reader"}))[
            "turns"] == 1)
        time.sleep(1.0)
        record = data_of(watcher.request("agent:info", {"agent_id": "reader"}))
        assert record["turns"] == 1 and record["messages_handled"] == 1  # once, not per node


def test_an_agent_inbox_keeps_its_position_in_the_cluster_and_replays_what_it_missed(
        two_nodes):
    a, b = two_nodes
    with b.client() as client:
        data_of(client.request("message:subscribe", {"agent_id": "scribe",
                                                     "topics": ["notes:*"]}))
        data_of(client.request("message:unsubscribe", {"agent_id": "other"}))
    # Node B stops; meanwhile A publishes. B's successor (any node) replays from the position.
    b.stop()
    ids = [data_of(a.request("message:publish", {"topic": "notes:1", "content": i,
                                                 "sender": "pen"}))["message_id"]
           for i in range(3)]
    with a.client() as client:
        data_of(client.request("system:subscribe", {"patterns": ["agent:inbox"]}))
        resumed = data_of(client.request("message:subscribe", {"agent_id": "scribe",
                                                              "replay": True}))
        assert resumed["topics"] == ["notes:*"] and resumed["replayed"] == 3
        handed = pushes(client, "agent:inbox", until=lambda m: m["message_id"] == ids[-1])
        assert [m["message_id"] for m in handed] == ids
        assert data_of(client.request("message:unsubscribe", {"agent_id": "scribe"}))[
            "topics"] == ["notes:*"]
        assert error_of(client.request("message:subscribe", {"agent_id": "scribe"}))[
            "code"] == "validation_error"  # no stored subscription any more


def test_an_agent_restarted_with_its_node_gets_what_was_published_meanwhile(workdir,
                                                                             nats_server):
    a, b = start_node(workdir, nats_server, "node-a"), start_node(workdir, nats_server, "node-b")
    try:
        data_of(b.request("agent:spawn", {"agent_id": "reader", "topics": ["news"]}))
        b.stop()
        with a.client(timeout=30) as room:
            data_of(room.request("message:subscribe", {"topics": ["news"]}))
            published = data_of(room.request("message:publish", {
                "topic": "news", "content": "Published while B was down", "sender": "wire"}))
            b.start()
            answer = pushes(room, "message:received", within=30,
                            until=lambda m: m["sender"] == "reader")[-1]
            assert "Published while B was down" in answer["content"]
        # Until B hears the cluster again it cannot say where the agent runs: it says so.
        early = b.request("agent:info", {"agent_id": "reader"})
        assert "data" in early or early["error"]["code"] == "unavailable", early
        wait_for(lambda: b.request("system:health")["data"]["cluster"]["jetstream"])
        record = data_of(b.request("agent:info", {"agent_id": "reader"}))
        assert record["turns"] == 1 and record["recent"][0]["message_id"] == \
            published["message_id"]
    finally:
        a.stop()
        b.stop()


def test_a_message_larger_than_nats_takes_is_refused_as_too_large(two_nodes):
    a, _b = two_nodes
    # The longest request line the daemon takes (1 MiB): the message it makes, with its id,
    # sender and timestamp, is a little longer than NATS's default limit (1 MiB too).
    envelope = len(orjson.dumps({"event": "message:publish",
                                 "data": {"topic": "big", "content": ""}}))
    content = "x" * ((1 << 20) - envelope - 1)
    error = error_of(a.request("message:publish", {"topic": "big", "content": content}))
    assert error["code"] == "payload_too_large" and "NATS" in error["message"]
    assert data_of(a.request("message:publish", {"topic": "big", "content": "small"}))


# ---- events -----------------------------------------------------------------------------------

def test_system_subscribe_on_b_sees_events_raised_on_a_once_and_not_the_local_only_ones(
        two_nodes):
    a, b = two_nodes
    with b.client() as watcher, a.client() as actor:
        data_of(watcher.request("system:subscribe", {"patterns": ["agent:*", "state:changed"]}))
        # Each node learns the other's subscriptions through the cluster within milliseconds:
        # spawn until the first one is seen, then count the next one's events.
        number = iter(range(1000))
        seen = wait_for(lambda: [p for p in pushes(watcher, "agent:spawned", within=0.3)
                                 if p["agent_id"].startswith("probe")] or
                        data_of(actor.request("agent:spawn", {
                            "agent_id": f"probe-{next(number)}"})) and False)
        assert seen
        data_of(actor.request("agent:spawn", {"agent_id": "counted"}))
        data_of(actor.request("state:set", {"key": "k", "value": 1}))
        data_of(actor.request("agent:terminate", {"agent_id": "counted"}))
        got = []
        deadline = time.monotonic() + WITHIN_S
        while not any(e == "agent:terminated" and d.get("agent_id") == "counted"
                      for e, d in got):
            assert time.monotonic() < deadline, got
            message = watcher.recv()
            if message["type"] == "event":
                got.append((message["event"], message["data"]))
        time.sleep(0.5)
        watcher.settimeout(0.5)
        try:
            while True:
                message = watcher.recv()
                got.append((message["event"], message["data"]))
        except (socket.timeout, TimeoutError):
            pass
        counted = [e for e, d in got if d.get("agent_id") == "counted"]
        assert counted.count("agent:spawn") == 1 and counted.count("agent:spawned") == 1
        assert counted.count("agent:terminated") == 1
        # state:changed is raised by every node for every change: it does not cross as well.
        assert [d["key"] for e, d in got if e == "state:changed"] == ["k"]


class SubjectListener:
    """A plain NATS client of the test's own, counting what goes out on some subjects."""

    def __init__(self, url: str, subject: str):
        import asyncio
        self.subjects: list[str] = []
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self._call(self._start(url, subject))

    def _call(self, coro):
        import asyncio
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(WITHIN_S)

    async def _start(self, url: str, subject: str) -> None:
        import nats

        async def heard(msg):
            self.subjects.append(msg.subject)
        self.nc = await nats.connect(url)
        await self.nc.subscribe(subject, cb=heard)
        await self.nc.flush()

    def close(self) -> None:
        self._call(self.nc.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(WITHIN_S)


def test_an_event_goes_on_the_wire_only_while_another_node_subscribed_to_it(two_nodes,
                                                                            nats_server):
    a, b = two_nodes
    wire = SubjectListener(nats_server.url, "ksi.event.>")
    try:
        for i in range(5):
            data_of(a.request("agent:spawn", {"agent_id": f"quiet-{i}"}))
        time.sleep(0.5)
        assert wire.subjects == []  # nobody anywhere subscribed: nothing was published
        with b.client() as watcher:
            data_of(watcher.request("system:subscribe", {"patterns": ["agent:spawned"]}))
            number = iter(range(1000))
            wait_for(lambda: "ksi.event.node-a.agent.spawned" in wire.subjects or data_of(
                a.request("agent:spawn", {"agent_id": f"loud-{next(number)}"})) and False)
            assert set(wire.subjects) == {"ksi.event.node-a.agent.spawned"}  # that one only
            data_of(watcher.request("system:unsubscribe", {}))
            time.sleep(0.5)  # the other node learns it within milliseconds
            heard = len(wire.subjects)
            for i in range(5):
                data_of(a.request("agent:spawn", {"agent_id": f"after-{i}"}))
            time.sleep(0.5)
            assert len(wire.subjects) == heard
    finally:
        wire.close()


# ---- failures: kill -9, NATS restarts ---------------------------------------------------------

def publish_until_stopped(node, topic: str, stop: threading.Event, acked: list, errors: list):
    """Publish one message at a time; keep each acknowledged id, and the code of each error."""
    try:
        with node.client(timeout=30) as client:
            i = 0
            while not stop.is_set():
                reply = client.request("message:publish", {"topic": topic, "content": i,
                                                           "sender": "load"})
                if "data" in reply:
                    acked.append(reply["data"]["message_id"])
                else:
                    errors.append(reply["error"]["code"])
                i += 1
    except (ConnectionError, OSError):
        pass  # the daemon was killed under it


def test_no_acknowledged_message_is_lost_over_repeated_kill_9_of_the_publisher(
        workdir, nats_server):
    b = start_node(workdir, nats_server, "node-b")
    subscriber, inbox = b.client(timeout=30), b.client(timeout=30)
    data_of(subscriber.request("message:subscribe", {"topics": ["orders"]}))
    data_of(inbox.request("system:subscribe", {"patterns": ["agent:inbox"]}))
    data_of(inbox.request("message:subscribe", {"agent_id": "auditor", "topics": ["orders"]}))
    acked: list[str] = []
    try:
        for trial in range(3):
            a = start_node(workdir, nats_server, "node-a")
            stop, errors = threading.Event(), []
            before = len(acked)
            thread = threading.Thread(target=publish_until_stopped,
                                      args=(a, "orders", stop, acked, errors))
            thread.start()
            wait_for(lambda: len(acked) >= before + 20)
            a.stop(signal.SIGKILL)
            stop.set()
            thread.join(30)
            assert errors == [], errors
        received = {m["message_id"] for m in pushes(
            subscriber, "message:received", until=lambda m: m["message_id"] == acked[-1])}
        assert set(acked) <= received  # every acknowledged one reached the live subscriber
        handed = [m["message_id"] for m in pushes(
            inbox, "agent:inbox", until=lambda m: m["message_id"] == acked[-1])]
        assert set(acked) <= set(handed) and len(handed) == len(set(handed))  # and the inbox
        history = data_of(b.request("message:history", {"topic": "orders",
                                                        "limit": 100_000}))["messages"]
        ids = [m["message_id"] for m in history]
        assert set(acked) <= set(ids) and len(ids) == len(set(ids))  # all there, once each
    finally:
        subscriber.close()
        inbox.close()
        b.stop()


def test_nats_restarted_under_publishing_load_keeps_every_acknowledged_message(
        two_nodes, nats_server):
    a, b = two_nodes
    stop, acked, errors = threading.Event(), [], []
    threads = [threading.Thread(target=publish_until_stopped,
                                args=(a, "load", stop, acked, errors)) for _ in range(2)]
    for thread in threads:
        thread.start()
    wait_for(lambda: len(acked) >= 50)
    nats_server.stop()
    wait_for(lambda: "unavailable" in errors)  # answered, not hung, while NATS is away
    at_restart = len(acked)
    nats_server.start()
    wait_for(lambda: len(acked) >= at_restart + 50, within=30)
    stop.set()
    for thread in threads:
        thread.join(30)
    assert set(errors) == {"unavailable"}
    wait_for(lambda: data_of(b.request("system:health"))["cluster"]["jetstream"], within=30)
    history = data_of(b.request("message:history", {"topic": "load", "limit": 100_000}))
    ids = [m["message_id"] for m in history["messages"]]
    assert set(acked) <= set(ids) and len(ids) == len(set(ids))


def test_losing_nats_answers_unavailable_for_cluster_operations_and_local_ones_go_on(
        two_nodes, nats_server):
    a, b = two_nodes
    with a.client() as client:
        data_of(client.request("message:subscribe", {"topics": ["t"]}))
        nats_server.stop()
        wait_for(lambda: data_of(client.request("system:health"))["cluster"][
            "reachable"] is False)
        started = time.monotonic()
        for event, data in (("message:publish", {"topic": "t", "content": 1}),
                            ("message:history", {"topic": "t"}),
                            ("message:subscribe", {"agent_id": "x", "topics": ["t"]}),
                            ("message:unsubscribe", {"agent_id": "x"})):
            error = error_of(client.request(event, data))
            assert error["code"] == "unavailable" and "NATS" in error["message"], error
        assert time.monotonic() - started < WITHIN_S
        # This node's own subscriptions still answer: they are not the cluster's.
        assert data_of(client.request("system:subscribe", {"patterns": ["agent:*"]}))
        assert data_of(client.request("message:subscribe", {"topics": ["u"]}))["topics"]
        nats_server.start()
        wait_for(lambda: data_of(client.request("system:health"))["cluster"]["jetstream"],
                 within=30)
        wait_for(lambda: data_of(b.request("system:health"))["cluster"]["jetstream"],
                 within=30)
        data_of(b.request("message:publish", {"topic": "t", "content": "back"}))
        assert pushes(client, "message:received",
                      until=lambda m: m["content"] == "back")[-1]["topic"] == "t"


def test_a_node_that_lost_nats_for_a_while_hands_its_subscribers_what_they_missed(
        workdir, nats_server):
    proxy = CuttableProxy(nats_server.port)
    a = start_node(workdir, nats_server, "node-a")
    (workdir / "node-b").mkdir()
    b = DaemonProcess(workdir / "node-b", RETAINED, env={"KSI_CLUSTER_NATS_URL": proxy.url,
                                                         "KSI_NODE_ID": "node-b"}).start()
    try:
        wait_for(lambda: data_of(b.request("system:health"))["cluster"]["jetstream"])
        with b.client() as subscriber:
            data_of(subscriber.request("message:subscribe", {"topics": ["feed"]}))
            proxy.cut(silently=False)  # its connections closed: B notices at once
            wait_for(lambda: data_of(b.request("system:health"))["cluster"]["reachable"]
                     is False)
            ids = [data_of(a.request("message:publish", {"topic": "feed", "content": i}))[
                "message_id"] for i in range(5)]  # while B cannot hear them
            # Longer than the server keeps a consumer nobody listens to (5 s for ephemeral
            # ones): B's feed must start again from where it was, not from a consumer that
            # survived the cut.
            time.sleep(6)
            proxy.heal()
            got = pushes(subscriber, "message:received", within=30,
                         until=lambda m: m["message_id"] == ids[-1])
            assert [m["message_id"] for m in got] == ids  # all of them, in order, once
            assert pushes(subscriber, "message:received", within=0.5) == []
        with b.client() as watcher:  # and it hears the other node's events again
            data_of(watcher.request("system:subscribe", {"patterns": ["agent:spawned"]}))
            number = iter(range(1000))
            assert wait_for(lambda: pushes(watcher, "agent:spawned", within=0.3) or data_of(
                a.request("agent:spawn", {"agent_id": f"after-cut-{next(number)}"})) and False)
    finally:
        a.stop()
        b.stop()
        proxy.close()


# ---- in-process: the subject mapping ----------------------------------------------------------

@pytest.mark.parametrize("name, subject", [
    ("room:lobby", "ksi.msg.room.lobby"), ("agents.alice", "ksi.msg.agents=2Ealice"),
    ("a::b", "ksi.msg.a.=.b"), ("room:", "ksi.msg.room.="), ("x y", "ksi.msg.x=20y")])
def test_topics_map_to_subjects_one_token_per_part(name, subject):
    assert subjects.topic_subject(name) == subject


def test_patterns_map_to_filters_that_cover_what_they_match_and_never_overlap():
    assert subjects.event_filter("agent:*") == "ksi.event.*.agent.>"
    assert subjects.event_filter("*") == "ksi.event.*.>"
    assert subjects.event_filter("agent:spawned") == "ksi.event.*.agent.spawned"
    assert subjects.event_filter("ag?nt:x") == "ksi.event.*.>"
    assert subjects.topic_filters(["room:*", "room:lobby", "news"]) == \
        ["ksi.msg.news", "ksi.msg.room.>"]
    assert subjects.topic_filters(["*", "room:*"]) == ["ksi.msg.>"]
    assert subjects.topic_filters(["room:*", "roomy"]) == ["ksi.msg.room.>", "ksi.msg.roomy"]


def test_the_event_name_is_read_from_a_push_line_as_encoded():
    assert event_name_of(encode_push("agent:spawned", {"a": 1}, "c-1")) == "agent:spawned"
    assert event_name_of(b'{"event":"x:y","type":"event"}\n') == "x:y"


def test_past_max_topics_the_least_recently_published_topic_is_forgotten_cluster_wide(
        workdir, nats_server):
    bounded = {"plugins": {"message": {"retention_per_topic": 2, "max_topics": 2}}}
    a, b = (cluster_nodes.start_node(workdir, nats_server, name, bounded)
            for name in ("node-a", "node-b"))

    def history(topic: str) -> list:
        return [m["content"] for m in data_of(a.request("message:history", {
            "topic": topic}))["messages"]]

    def publish(node, topic: str, content: str) -> None:
        data_of(node.request("message:publish", {"topic": topic, "content": content}))

    try:
        publish(a, "t1", "1a")
        publish(b, "t2", "2a")
        publish(a, "t1", "1b")  # t2 is now the least recently published
        publish(b, "t3", "3a")
        wait_for(lambda: history("t2") == [], seen=lambda: history("t2"))
        assert history("t1") == ["1a", "1b"] and history("t3") == ["3a"]
        # A node restarted has not seen the topics published before: the stream's own bound,
        # retention_per_topic × max_topics messages, forgets the oldest for it.
        a.stop()
        a = cluster_nodes.start_node(workdir, nats_server, "node-a", bounded)
        for topic in ("t4", "t5"):
            publish(a, topic, f"{topic}a")
            publish(a, topic, f"{topic}b")
        assert [history(t) for t in ("t1", "t3", "t4", "t5")] == \
            [[], [], ["t4a", "t4b"], ["t5a", "t5b"]]
    finally:
        a.stop()
        b.stop()
