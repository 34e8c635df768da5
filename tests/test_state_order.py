"""One connection is one ordered stream (PROTOCOL.md §1): a request sees every write sent before
it on the same connection, whether or not that write's reply was written yet. Requests are
pipelined (sent in one burst, replies read afterwards), through the real socket."""
from __future__ import annotations

import orjson

from conftest import data_of

KEYS = 200


def pipeline(client, requests: list[tuple[str, dict]]) -> list[dict]:
    """Send every request at once; return their replies in the order the requests were sent."""
    client.send_raw(b"".join(
        orjson.dumps({"event": event, "data": data, "correlation_id": f"r{n}"}) + b"\n"
        for n, (event, data) in enumerate(requests)))
    replies = {}
    while len(replies) < len(requests):
        reply = client.recv_reply()
        replies[reply["correlation_id"]] = reply
    return [data_of(replies[f"r{n}"]) for n in range(len(requests))]


def test_a_get_pipelined_after_a_set_sees_it(daemon):
    with daemon.client() as client:
        requests = []
        for n in range(KEYS):
            requests += [("state:set", {"key": f"k{n}", "value": [n]}),
                         ("state:get", {"key": f"k{n}"})]
        replies = pipeline(client, requests)
    for n in range(KEYS):
        written, read = replies[2 * n], replies[2 * n + 1]
        assert read == {"namespace": "global", "key": f"k{n}", "found": True, "value": [n],
                        "version": written["version"]}


def test_a_get_pipelined_after_a_delete_misses(daemon):
    with daemon.client() as client:
        pipeline(client, [("state:set", {"key": f"k{n}", "value": n}) for n in range(KEYS)])
        # The cache holds every key now: a stale hit would answer found: true.
        assert all(r["found"] for r in pipeline(
            client, [("state:get", {"key": f"k{n}"}) for n in range(KEYS)]))
        requests = []
        for n in range(KEYS):
            requests += [("state:delete", {"key": f"k{n}"}), ("state:get", {"key": f"k{n}"})]
        replies = pipeline(client, requests)
    for n in range(KEYS):
        assert replies[2 * n] == {"deleted": True}
        assert replies[2 * n + 1]["found"] is False, replies[2 * n + 1]


def test_set_then_delete_then_get_in_one_burst(daemon):
    with daemon.client() as client:
        requests = []
        for n in range(KEYS):
            requests += [("state:set", {"key": f"k{n}", "value": n}),
                         ("state:delete", {"key": f"k{n}"}),
                         ("state:get", {"key": f"k{n}"}),
                         ("state:set", {"key": f"k{n}", "value": -n}),
                         ("state:get", {"key": f"k{n}"})]
        replies = pipeline(client, requests)
    for n in range(KEYS):
        _set, deleted, gone, again, read = replies[5 * n:5 * n + 5]
        assert deleted == {"deleted": True}
        assert gone["found"] is False, gone
        assert again["version"] == 1  # a deleted key starts over
        assert (read["found"], read["value"], read["version"]) == (True, -n, 1)


def test_list_and_clear_follow_the_writes_before_them(daemon):
    with daemon.client() as client:
        replies = pipeline(client, [
            *[("state:set", {"key": f"p{n:03}", "value": n, "namespace": "ordered"})
              for n in range(50)],
            ("state:list", {"namespace": "ordered", "prefix": "p"}),
            ("state:delete", {"key": "p000", "namespace": "ordered"}),
            ("state:list", {"namespace": "ordered", "prefix": "p", "limit": 1}),
            ("state:clear", {"namespace": "ordered"}),
            ("state:get", {"key": "p001", "namespace": "ordered"}),
            ("state:list", {"namespace": "ordered"}),
            ("state:set", {"key": "p002", "value": "new", "namespace": "ordered"}),
            ("state:get", {"key": "p002", "namespace": "ordered"}),
        ])
    listed, deleted, first, cleared, gone, empty, again, read = replies[50:]
    assert listed == {"keys": [f"p{n:03}" for n in range(50)], "count": 50}
    assert deleted == {"deleted": True}
    assert first == {"keys": ["p001"], "count": 1}
    assert cleared == {"deleted": 49}
    assert gone["found"] is False
    assert empty == {"keys": [], "count": 0}
    assert again["version"] == 1
    assert (read["value"], read["version"]) == ("new", 1)


def test_a_compare_and_set_pipelined_after_a_set_sees_its_version(daemon):
    with daemon.client() as client:
        replies = pipeline(client, [
            ("state:set", {"key": "cas", "value": 1}),
            ("state:get", {"key": "cas"}),
            ("state:set", {"key": "cas", "value": 2, "if_version": 1}),
            ("state:get", {"key": "cas"}),
        ])
    assert replies[1]["version"] == 1 and replies[2]["version"] == 2
    assert (replies[3]["value"], replies[3]["version"]) == (2, 2)


def test_a_writer_subscribed_to_its_changes_gets_each_reply_before_its_change(daemon):
    """A write's `state:changed` (which carries its correlation id) comes after the write's
    reply, so a client matching lines by correlation id takes the reply first: the rule
    PROTOCOL.md §1 states for accepted requests, kept by writes too (docs/STATE.md)."""
    with daemon.client() as client:
        client.request("system:subscribe", {"patterns": ["state:changed"]})
        client.send_raw(b"".join(
            orjson.dumps({"event": event, "data": data, "correlation_id": cid}) + b"\n"
            for event, data, cid in [("state:set", {"key": "seen", "value": 1}, "s1"),
                                     ("state:set", {"key": "seen", "value": 2}, "s2"),
                                     ("state:delete", {"key": "seen"}, "d1"),
                                     ("state:set", {"key": "seen", "value": 3}, "s3"),
                                     ("state:clear", {}, "c1")]))
        lines = [client.recv() for _ in range(10)]
    at = {(line["type"], line["correlation_id"]): n for n, line in enumerate(lines)}
    for cid in ("s1", "s2", "d1", "s3", "c1"):
        assert at[("reply", cid)] < at[("event", cid)], lines
    assert [(line["correlation_id"], line["data"]["op"]) for line in lines
            if line["type"] == "event"] == [
        ("s1", "set"), ("s2", "set"), ("d1", "delete"), ("s3", "set"), ("c1", "clear")]
