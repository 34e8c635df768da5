"""An accepted request's reply leaves before any push that carries its correlation id.

Read as raw lines, in the order they arrive on the socket, as a client that matches lines by
correlation id does: the first line with the request's id must be its reply.

On the in-process daemon's real socket (the Unix transport plugin, as a daemon process runs it):
a daemon process would import litellm for each test.
"""
from __future__ import annotations

import orjson
import pytest

from conftest import LineClient

pytestmark = pytest.mark.daemon("inprocess")


def lines_with(client: LineClient, cid: str, until_event: str, limit: int = 200) -> list[dict]:
    """Every line carrying `cid`, in arrival order, up to the push named `until_event`."""
    seen: list[dict] = []
    for _ in range(limit):
        message = client.recv()
        if message.get("correlation_id") == cid:
            seen.append(message)
            if message.get("event") == until_event and message["type"] == "event":
                return seen
    raise AssertionError(f"no {until_event} for {cid} within {limit} lines: {seen}")


def test_completion_async_replies_before_its_first_push(daemon):
    with daemon.socket_client(timeout=60) as client:
        for n in range(5):  # the first one may also wait for litellm to load
            cid = f"order-{n}"
            client.send("completion:async", {"prompt": f"hello number {n}", "stream": True},
                        correlation_id=cid)
            seen = lines_with(client, cid, "completion:result")
            kinds = [(m["type"], m.get("event")) for m in seen]
            assert kinds[0] == ("reply", "completion:async"), kinds
            assert "error" not in seen[0], seen[0]
            assert ("event", "completion:progress") in kinds[1:], kinds


def test_pipelined_async_requests_each_reply_before_their_pushes(daemon):
    with daemon.socket_client(timeout=60) as client:
        cids = [f"pipe-{n}" for n in range(10)]
        client.send_raw(b"".join(orjson.dumps({"event": "completion:async", "correlation_id": c,
                                               "data": {"prompt": f"say {c}"}}) + b"\n"
                                 for c in cids))
        replied: set[str] = set()
        ended: set[str] = set()
        while ended != set(cids):
            message = client.recv()
            cid = message.get("correlation_id")
            if message["type"] == "reply":
                assert "error" not in message, message
                replied.add(cid)
            else:
                assert cid in replied, f"a push for {cid} came before its reply: {message}"
                if message["event"] == "completion:result":
                    ended.add(cid)
