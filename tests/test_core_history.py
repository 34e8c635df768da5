"""Bounded memory (promise 5): the event-history ring keeps big data as a small truncated copy."""
from __future__ import annotations

import orjson

from conftest import rss_bytes

from ksi_daemon.core.history import estimated_size, truncated, walked_size
from ksi_daemon.core.memory_connection import MemoryConnection
from ksi_daemon.core.router import Handler, Router

MiB = 1024 * 1024


def router_with_history(entries: int = 100, total_bytes: int = 100 * 1024) -> Router:
    router = Router(max_event_history=entries, max_event_history_bytes=total_bytes)

    def echo_size(data, ctx):
        ctx.push("test:pushed", data)
        return {"fields": len(data)}
    router.add_handler(Handler("test:big", echo_size, plugin=None))
    router.seal()
    return router


def test_truncated_keeps_small_fields_and_names_the_rest():
    copy = truncated({"key": "k", "n": 3, "value": "x" * 5000, "flag": True}, 5050)
    assert copy == {"_truncated": {"bytes": 5050, "left_out": ["value"]}, "key": "k", "n": 3,
                    "flag": True}
    assert truncated(["x" * 5000], 5010) == {"_truncated": {"bytes": 5010}}
    many = truncated({f"field{i}": "x" * 200 for i in range(100)}, 30000)
    assert len(many["_truncated"]["left_out"]) == 16 and len(orjson.dumps(many)) < 1024


def test_estimated_size_is_the_json_size_and_the_walk_stops_past_the_limit():
    data = {"a": "x" * 1000, "b": [1, 2, {"c": "y" * 500}]}
    assert estimated_size(data, 10 ** 9) == len(orjson.dumps(data))
    assert abs(walked_size(data, 10 ** 9) - len(orjson.dumps(data))) < 64
    # What orjson cannot encode is walked, and the walk stops once past the limit.
    huge = {"items": ["x" * 100] * 100_000, "odd": {1, 2}}
    assert estimated_size(huge, 4096) < 4096 + 200  # stopped early, not 10 MB counted


async def test_big_requests_pushes_and_emits_are_truncated_in_history_small_ones_kept():
    router = router_with_history()  # 1 KiB of data per entry
    conn = MemoryConnection(router)
    watcher = MemoryConnection(router)
    router.subscribe(watcher, ["test:*"])
    big = {"key": "k", "value": "x" * 50_000}
    assert (await conn.ask("test:big", big))["data"] == {"fields": 2}
    assert (await conn.ask("test:big", {"key": "small"}))["data"] == {"fields": 1}
    await router.emit("test:emitted", {"text": "y" * 50_000}, source="tester")
    kept = [(event, source, data) for event, _cid, _at, source, data in router.history]
    assert [(event, source) for event, source, _ in kept] == [
        ("test:pushed", "push"), ("test:big", conn.id), ("test:pushed", "push"),
        ("test:big", conn.id), ("test:emitted", "tester")]
    pushed, request, small_push, small, emitted = (data for _, _, data in kept)
    assert request["_truncated"]["bytes"] > 50_000 and request["key"] == "k"
    assert request["_truncated"]["left_out"] == ["value"]
    assert pushed["_truncated"]["left_out"] == ["value"]
    assert small == small_push == {"key": "small"}
    assert emitted["_truncated"]["left_out"] == ["text"]
    # subscribers and the requester still got the whole data
    assert watcher.pushes[0]["data"] == big and conn.pushes[0]["data"] == big


def test_many_large_requests_leave_history_truncated_and_memory_bounded(daemon_factory):
    # completion is off: its background litellm import would dwarf what is measured here
    daemon = daemon_factory({"plugins": {"completion": {"enabled": False}}})
    blob = "x" * (900 * 1024)
    with daemon.client(timeout=30) as client:
        client.request("system:health")
        baseline = client.request("system:metrics")["data"]["rss_bytes"]
        for i in range(300):  # ~270 MB: the old ring kept every one of them whole
            client.send("system:health", {"blob": blob, "n": i}, correlation_id=f"big-{i}")
            assert client.recv()["correlation_id"] == f"big-{i}"
        rss = client.request("system:metrics")["data"]["rss_bytes"]
        assert rss - baseline < 64 * MiB, f"daemon grew by {rss - baseline} bytes"
        history = client.request("system:event_history", {"pattern": "system:health",
                                                          "limit": 1000})["data"]["events"]
    big = [e["data"] for e in history if e["correlation_id"].startswith("big-")]
    assert len(big) == 300
    assert all(d["_truncated"]["left_out"] == ["blob"] and d["_truncated"]["bytes"] > len(blob)
               for d in big)
    assert [d["n"] for d in big] == list(range(300))
    assert rss_bytes(daemon.proc.pid) - baseline < 64 * MiB
