"""The message events: topics, fan-out, retention, agents' inboxes.

On the in-process daemon (tests/inprocess.py; a restart is its graceful stop and start), except
what needs a real socket or process: a subscriber that never reads (back-pressure) and kill -9.
"""
from __future__ import annotations

import signal
import socket
import sqlite3
import time

import pytest

from conftest import data_of, error_of


@pytest.fixture
def daemon(inprocess_daemon):
    return inprocess_daemon


def next_push(client, event: str = "message:received") -> dict:
    while True:
        message = client.recv()
        if message["type"] == "event" and message["event"] == event:
            return message


def assert_no_push(client, wait_s: float = 0.3) -> None:
    """Nothing arrives for `wait_s`: a request's reply then closes the window, since pushes
    written before it arrive before it on the same connection."""
    time.sleep(wait_s)
    reply, pushes = request_keeping_pushes(client, "system:health")
    assert reply["event"] == "system:health"
    assert [p for p in pushes if p["event"] == "message:received"] == []


def request_keeping_pushes(client, event: str, data: dict | None = None):
    """The reply to one request, and the pushes that arrived before it."""
    client.send(event, data)
    pushes = []
    while True:
        message = client.recv()
        if message["type"] == "reply":
            return message, pushes
        pushes.append(message)


def test_subscriber_receives_a_publish_with_exact_fields(daemon):
    with daemon.client() as subscriber, daemon.client() as publisher:
        assert data_of(subscriber.request("message:subscribe", {"topics": ["room:lobby"]})) \
            ["topics"] == ["room:lobby"]
        reply = publisher.request("message:publish", {
            "topic": "room:lobby", "content": {"text": "hi", "n": [1, 2.5, None]},
            "sender": "alice"}, correlation_id="pub-1")
        published = data_of(reply)
        assert published["delivered"] == 1
        push = next_push(subscriber)
        assert push["correlation_id"] == "pub-1"
        assert set(push["data"]) == {"message_id", "topic", "sender", "content", "timestamp"}
        assert push["data"]["message_id"] == published["message_id"]
        assert push["data"]["topic"] == "room:lobby"
        assert push["data"]["sender"] == "alice"
        assert push["data"]["content"] == {"text": "hi", "n": [1, 2.5, None]}
        assert abs(push["data"]["timestamp"] - time.time()) < 60


def test_subscribe_reply_lists_the_connections_topics(daemon):
    with daemon.client() as client:
        first = data_of(client.request("message:subscribe", {"topics": ["a", "b"]}))
        assert first["topics"] == ["a", "b"]
        second = data_of(client.request("message:subscribe", {"topics": ["c", "a"]}))
        assert second["topics"] == ["a", "b", "c"]


def test_wildcard_subscriptions_match_topics(daemon):
    with daemon.client() as rooms, daemon.client() as everything, \
            daemon.client() as publisher:
        data_of(rooms.request("message:subscribe", {"topics": ["room:*"]}))
        data_of(everything.request("message:subscribe", {"topics": ["*"]}))
        assert data_of(publisher.request("message:publish",
                                         {"topic": "room:kitchen", "content": 1}))["delivered"] == 2
        assert data_of(publisher.request("message:publish",
                                         {"topic": "agents.bob", "content": 2}))["delivered"] == 1
        assert next_push(rooms)["data"]["topic"] == "room:kitchen"
        assert [next_push(everything)["data"]["content"] for _ in range(2)] == [1, 2]
        assert_no_push(rooms)


def test_fnmatch_patterns_and_exact_topics(daemon):
    with daemon.client() as subscriber, daemon.client() as publisher:
        data_of(subscriber.request("message:subscribe", {"topics": ["agents.?", "exact"]}))
        delivered = [data_of(publisher.request("message:publish",
                                               {"topic": t, "content": t}))["delivered"]
                     for t in ("agents.a", "agents.ab", "exact", "exactly")]
        assert delivered == [1, 0, 1, 0]
        assert [next_push(subscriber)["data"]["content"] for _ in range(2)] == ["agents.a", "exact"]


def test_unsubscribe_stops_delivery(daemon):
    with daemon.client() as subscriber, daemon.client() as publisher:
        data_of(subscriber.request("message:subscribe", {"topics": ["x", "y", "z"]}))
        assert data_of(subscriber.request("message:unsubscribe", {"topics": ["x", "nope"]})) \
            ["topics"] == ["x"]
        assert data_of(publisher.request("message:publish",
                                         {"topic": "x", "content": 1}))["delivered"] == 0
        assert data_of(publisher.request("message:publish",
                                         {"topic": "y", "content": 2}))["delivered"] == 1
        assert next_push(subscriber)["data"]["content"] == 2
        assert sorted(data_of(subscriber.request("message:unsubscribe"))["topics"]) == ["y", "z"]
        assert data_of(publisher.request("message:publish",
                                         {"topic": "z", "content": 3}))["delivered"] == 0
        assert_no_push(subscriber)


def test_publisher_gets_its_own_message_only_when_subscribed(daemon):
    with daemon.client() as publisher:
        reply = data_of(publisher.request("message:publish", {"topic": "t", "content": "a"}))
        assert reply["delivered"] == 0
        assert_no_push(publisher)
        data_of(publisher.request("message:subscribe", {"topics": ["t"]}))
        reply, pushes = request_keeping_pushes(publisher, "message:publish",
                                               {"topic": "t", "content": "b"})
        assert data_of(reply)["delivered"] == 1
        assert pushes == []  # its own delivery waits for the reply (PROTOCOL.md §1)
        push = next_push(publisher)
        assert push["data"]["content"] == "b"
        assert push["correlation_id"] == reply["correlation_id"]
        assert_no_push(publisher)  # once
        # With no sender given, the sender is the publishing connection.
        assert push["data"]["sender"] == publisher.connection.id


def test_delivered_counts_every_subscriber(daemon):
    clients = [daemon.client() for _ in range(5)]
    try:
        for index, client in enumerate(clients):
            data_of(client.request("message:subscribe",
                                   {"topics": ["fan" if index % 2 == 0 else "other"]}))
        with daemon.client() as publisher:
            assert data_of(publisher.request("message:publish",
                                             {"topic": "fan", "content": None}))["delivered"] == 3
        for client in clients[::2]:
            assert next_push(client)["data"]["content"] is None
    finally:
        for client in clients:
            client.close()


@pytest.mark.parametrize("data", [
    {"topic": "", "content": 1},
    {"topic": "bad\ntopic", "content": 1},
    {"topic": "x" * 257, "content": 1},
    {"topic": "room:*", "content": 1},
    {"topic": "t"},
    {"topic": 5, "content": 1},
    {"topic": "t", "content": 1, "unexpected": True},
])
def test_invalid_publish_is_a_validation_error(daemon, data):
    with daemon.client() as client:
        assert error_of(client.request("message:publish", data))["code"] == "validation_error"
        assert data_of(client.request("system:health"))["status"] == "healthy"


def test_invalid_subscriptions_are_validation_errors(daemon):
    with daemon.client() as client:
        for data in ({"topics": []}, {"topics": ["ok", "\x00"]}, {"topics": "room"}, {},
                     {"topics": ["ok"], "replay": True}):
            assert error_of(client.request("message:subscribe", data))["code"] == \
                "validation_error", data
        assert error_of(client.request("message:history", {"topic": "a*"}))["code"] == \
            "validation_error"
        assert data_of(client.request("message:subscribe", {"topics": ["fine"]}))["topics"] == \
            ["fine"]


def test_subscriptions_per_connection_are_bounded(inprocess_factory):
    daemon = inprocess_factory(config={"plugins": {"message": {"max_patterns_per_subscriber": 3}}})
    with daemon.client() as client:
        data_of(client.request("message:subscribe", {"topics": ["a", "b"]}))
        error = error_of(client.request("message:subscribe", {"topics": ["c", "d"]}))
        assert error["code"] == "validation_error" and "at most 3" in error["message"]
        assert data_of(client.request("message:subscribe", {"topics": ["c", "a"]}))["topics"] == \
            ["a", "b", "c"]


def test_a_subscriber_that_never_reads_does_not_stall_the_others(daemon_factory):
    daemon = daemon_factory(config={"daemon": {"output_buffer_bytes": 64 * 1024,
                                               "slow_consumer_grace_s": 0.5}})
    stuck = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stuck.connect(str(daemon.socket_path))
    stuck.sendall(b'{"event": "message:subscribe", "data": {"topics": ["flood"]}}\n')
    with daemon.client() as reader, daemon.client() as publisher:
        data_of(reader.request("message:subscribe", {"topics": ["flood"]}))
        payload = "x" * 4000
        deliveries = []
        for index in range(400):  # ~1.6 MB: far past the stuck client's buffers
            publisher.send("message:publish", {"topic": "flood", "content": payload,
                                               "sender": str(index)})
            deliveries.append(data_of(publisher.recv_reply())["delivered"])
            # The reading subscriber keeps up and gets every message, in order.
            assert next_push(reader)["data"]["sender"] == str(index)
        assert deliveries[0] == 2
        assert deliveries[-1] == 1  # the stuck subscriber's pushes are dropped, not counted
        assert data_of(publisher.request("system:health"))["status"] == "healthy"
        time.sleep(1.0)  # past the grace period: the stuck subscriber is disconnected
        assert data_of(publisher.request("message:publish",
                                         {"topic": "flood", "content": "after"}))["delivered"] == 1
        metrics = data_of(publisher.request("system:metrics"))
        assert metrics["connections"] == 2
    stuck.close()


def test_closed_connections_are_dropped(daemon):
    with daemon.client() as publisher:
        leaving = daemon.client()
        data_of(leaving.request("message:subscribe", {"topics": ["bye"]}))
        assert data_of(publisher.request("message:publish",
                                         {"topic": "bye", "content": 1}))["delivered"] == 1
        leaving.close()
        time.sleep(0.2)
        assert data_of(publisher.request("message:publish",
                                         {"topic": "bye", "content": 2}))["delivered"] == 0
        with daemon.client() as staying:
            data_of(staying.request("message:subscribe", {"topics": ["bye"]}))
            assert data_of(publisher.request("message:publish",
                                             {"topic": "bye", "content": 3}))["delivered"] == 1
            assert next_push(staying)["data"]["content"] == 3


def test_history_keeps_the_last_n_per_topic(inprocess_factory):
    daemon = inprocess_factory(config={"plugins": {"message": {"retention_per_topic": 3}}})
    with daemon.client() as client:
        ids = [data_of(client.request("message:publish", {"topic": "h", "content": i}))
               ["message_id"] for i in range(5)]
        data_of(client.request("message:publish", {"topic": "other", "content": "o"}))
        history = data_of(client.request("message:history", {"topic": "h", "limit": 10}))
        assert history["count"] == 3
        assert [m["content"] for m in history["messages"]] == [2, 3, 4]
        assert [m["message_id"] for m in history["messages"]] == ids[2:]
        assert [m["content"] for m in data_of(client.request(
            "message:history", {"topic": "h", "limit": 2}))["messages"]] == [3, 4]
        assert data_of(client.request("message:history", {"topic": "never"}))["count"] == 0
    assert daemon.stop() == 0
    db = sqlite3.connect(daemon.var_dir / "plugins" / "message" / "messages.db")
    try:
        rows = db.execute("SELECT topic, count(*) FROM messages GROUP BY topic ORDER BY topic")
        assert rows.fetchall() == [("h", 3), ("other", 1)]
    finally:
        db.close()
    daemon.start()
    with daemon.client() as client:
        history = data_of(client.request("message:history", {"topic": "h"}))
        assert [m["content"] for m in history["messages"]] == [2, 3, 4]
        new_id = data_of(client.request("message:publish", {"topic": "h", "content": 5}))
        assert new_id["message_id"] not in ids


def test_retained_topics_are_bounded_and_stay_so_after_a_restart(inprocess_factory):
    daemon = inprocess_factory(config={"plugins": {"message": {"max_topics": 2}}})
    with daemon.client() as client:
        for topic in ("a", "b", "a", "c"):  # "b" is then the least recently published
            data_of(client.request("message:publish", {"topic": topic, "content": topic}))
        counts = {t: data_of(client.request("message:history", {"topic": t}))["count"]
                  for t in ("a", "b", "c")}
        assert counts == {"a": 2, "b": 0, "c": 1}
    assert daemon.stop() == 0
    daemon.start()
    with daemon.client() as client:
        counts = {t: data_of(client.request("message:history", {"topic": t}))["count"]
                  for t in ("a", "b", "c")}
        assert counts == {"a": 2, "b": 0, "c": 1}


def test_retained_messages_and_agent_subscriptions_survive_a_crash(daemon_factory):
    daemon = daemon_factory()  # a process: it is killed
    with daemon.client() as client:
        # An agent subscription is committed before its reply.
        data_of(client.request("message:subscribe", {"agent_id": "k", "topics": ["inbox.k"]}))
        published = data_of(client.request("message:publish",
                                           {"topic": "crash", "content": "kept"}))
    # A retained message is committed right after its reply: wait until the file has it.
    db_path = daemon.var_dir / "plugins" / "message" / "messages.db"
    deadline = time.monotonic() + 10
    while True:
        db = sqlite3.connect(db_path)
        try:
            found = db.execute("SELECT message_id FROM messages").fetchall()
        finally:
            db.close()
        if found or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert found == [(published["message_id"],)]
    daemon.stop(signal.SIGKILL)
    daemon.start()
    with daemon.client() as watcher, daemon.client() as client:
        history = data_of(client.request("message:history", {"topic": "crash"}))
        assert [m["message_id"] for m in history["messages"]] == [published["message_id"]]
        data_of(watcher.request("system:subscribe", {"patterns": ["agent:inbox"]}))
        data_of(client.request("message:publish", {"topic": "inbox.k", "content": "later"}))
        assert data_of(client.request("message:subscribe", {"agent_id": "k", "replay": True})) \
            == {"topics": ["inbox.k"], "agent_id": "k", "replayed": 1}
        assert agent_inbox_of(watcher)["content"] == "later"


def test_pipelined_publishes_answer_in_order_before_their_own_push(daemon):
    with daemon.client() as client:
        data_of(client.request("message:subscribe", {"topics": ["self"]}))
        client.send_raw(b"".join(
            b'{"event": "message:publish", "correlation_id": "p%d", '
            b'"data": {"topic": "self", "content": %d}}\n' % (i, i) for i in range(20)))
        seen = [client.recv() for _ in range(40)]
        replies = [m["correlation_id"] for m in seen if m["type"] == "reply"]
        pushes = [m["data"]["content"] for m in seen if m["type"] == "event"]
        assert replies == [f"p{i}" for i in range(20)]
        assert pushes == list(range(20))
        # Everything on one connection arrives in the order it happened, except that each
        # publish's own delivery waits for its reply: reply, push, then the next publish's.
        assert [(m["type"], m["correlation_id"]) for m in seen] == \
            [(kind, f"p{i}") for i in range(20) for kind in ("reply", "event")]


def test_history_respects_the_maximum_age(inprocess_factory):
    daemon = inprocess_factory(config={"plugins": {"message": {"retention_max_age_s": 0.5}}})
    with daemon.client() as client:
        data_of(client.request("message:publish", {"topic": "old", "content": 1}))
        time.sleep(0.8)
        data_of(client.request("message:publish", {"topic": "old", "content": 2}))
        history = data_of(client.request("message:history", {"topic": "old"}))
        assert [m["content"] for m in history["messages"]] == [2]


def agent_inbox_of(client) -> dict:
    return next_push(client, "agent:inbox")["data"]


def test_agent_subscription_delivers_agent_inbox_events(daemon):
    with daemon.client() as watcher, daemon.client() as publisher:
        data_of(watcher.request("system:subscribe", {"patterns": ["agent:inbox"]}))
        reply = data_of(publisher.request("message:subscribe",
                                          {"agent_id": "a1", "topics": ["room:*"]}))
        assert reply == {"topics": ["room:*"], "agent_id": "a1", "replayed": 0}
        published = data_of(publisher.request("message:publish", {
            "topic": "room:1", "content": {"q": "?"}, "sender": "bob"}))
        assert published["delivered"] == 1
        inbox = agent_inbox_of(watcher)
        assert inbox == {"agent_id": "a1", "message_id": published["message_id"],
                         "topic": "room:1", "sender": "bob", "content": {"q": "?"},
                         "timestamp": inbox["timestamp"]}
        # An agent never receives its own messages.
        own = data_of(publisher.request("message:publish",
                                        {"topic": "room:1", "content": "mine", "sender": "a1"}))
        assert own["delivered"] == 0
        assert data_of(publisher.request("message:unsubscribe", {"agent_id": "a1"}))["topics"] \
            == ["room:*"]
        assert data_of(publisher.request("message:publish",
                                         {"topic": "room:1", "content": 3}))["delivered"] == 0


def test_agent_subscription_survives_a_restart_and_replays_what_it_missed(daemon):
    with daemon.client() as client:
        data_of(client.request("message:subscribe", {"agent_id": "a1", "topics": ["inbox.a1"]}))
        data_of(client.request("message:subscribe", {"agent_id": "a2", "topics": ["inbox.*"]}))
        seen = data_of(client.request("message:publish",
                                      {"topic": "inbox.a1", "content": "seen live"}))
        assert seen["delivered"] == 2
        # a2 leaves its inbox without being unsubscribed: it stays stored for the restart.
    assert daemon.stop() == 0
    daemon.start()
    with daemon.client() as watcher, daemon.client() as client:
        data_of(watcher.request("system:subscribe", {"patterns": ["agent:inbox"]}))
        # Nobody resumed the agents yet: messages are kept for them, not delivered.
        missed = data_of(client.request("message:publish",
                                        {"topic": "inbox.a1", "content": "while away",
                                         "sender": "bob"}))
        assert missed["delivered"] == 0
        data_of(client.request("message:publish",
                               {"topic": "inbox.a1", "content": "from itself", "sender": "a1"}))
        resumed = data_of(client.request("message:subscribe", {"agent_id": "a1", "replay": True}))
        assert resumed == {"topics": ["inbox.a1"], "agent_id": "a1", "replayed": 1}
        inbox = agent_inbox_of(watcher)
        assert (inbox["agent_id"], inbox["content"], inbox["message_id"]) == \
            ("a1", "while away", missed["message_id"])
        # Resumed: live again; and a second replay hands nothing twice.
        assert data_of(client.request("message:publish",
                                      {"topic": "inbox.a1", "content": "live"}))["delivered"] == 1
        assert agent_inbox_of(watcher)["content"] == "live"
        again = data_of(client.request("message:subscribe", {"agent_id": "a1", "replay": True}))
        assert again["replayed"] == 0
        # a2 resumes without replay: it skips what it missed and only gets new messages.
        assert data_of(client.request("message:subscribe", {"agent_id": "a2"}))["replayed"] == 0
        assert data_of(client.request("message:publish",
                                      {"topic": "inbox.b", "content": "new"}))["delivered"] == 1
        inbox = agent_inbox_of(watcher)
        assert (inbox["agent_id"], inbox["content"]) == ("a2", "new")
    with daemon.client() as client:
        assert error_of(client.request("message:subscribe",
                                       {"agent_id": "nobody", "replay": True}))["code"] == \
            "validation_error"


def test_replay_after_a_restart_reaches_messages_published_before_it(daemon):
    with daemon.client() as client:
        data_of(client.request("message:subscribe", {"agent_id": "w", "topics": ["jobs"]}))
    assert daemon.stop() == 0
    daemon.start()
    with daemon.client() as client:
        published = [data_of(client.request("message:publish", {"topic": "jobs", "content": i}))
                     ["message_id"] for i in range(3)]
    assert daemon.stop() == 0  # published, then the daemon went down before the agent came back
    daemon.start()
    with daemon.client() as watcher, daemon.client() as client:
        data_of(watcher.request("system:subscribe", {"patterns": ["agent:inbox"]}))
        assert data_of(client.request("message:subscribe",
                                      {"agent_id": "w", "topics": ["jobs"], "replay": True})) \
            ["replayed"] == 3
        assert [agent_inbox_of(watcher)["message_id"] for _ in range(3)] == published
