"""Interrupts that land inside a tool loop, over the daemon's real socket: a streaming
completion stopped while its answer streams, and an agent interrupted while its tool call runs.
Either way the turn stops, the conversation never keeps a tool call without its result (the
fake server refuses such a history, as OpenAI does), and the next message is answered."""
from __future__ import annotations

import time
from pathlib import Path

import orjson
import pytest

from conftest import data_of

pytestmark = pytest.mark.daemon("inprocess")
PLUGINS = Path(__file__).parent / "plugins"
NOTE = "[interrupted: this turn was stopped before it was answered]"


@pytest.fixture
def daemon(daemon_factory, fake_openai):
    aliases = {name: {"model": f"openai/{name}", "api_base": fake_openai.api_base,
                      "api_key": "sk-test"} for name in ("echo", "slow")}
    return daemon_factory(config={"daemon": {"plugin_dirs": [str(PLUGINS / "tool_loop")]},
                                  "plugins": {"completion": {"aliases": aliases,
                                                             "retry": {"max_attempts": 1}}}})


def wait_until(condition, what: str, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
    return value


def stored(client, session_id: str) -> list[dict]:
    reply = client.request("conversation:get", {"session_id": session_id})
    return reply.get("data", {}).get("messages", [])


def test_a_stream_with_tools_stopped_mid_answer_stops_and_leaves_a_valid_conversation(
        daemon, fake_openai):
    with daemon.client(timeout=30) as client:
        data_of(client.request("state:set", {"namespace": "tools", "key": "answer",
                                             "value": 7731}))
        client.send("completion:async", {
            "prompt": '/tool state:get {"namespace": "tools", "key": "answer"}',
            "model": "slow", "tools": ["state:get"], "stream": True, "session_id": "ms"},
            correlation_id="streaming")
        request_id = data_of(client.recv_reply())["request_id"]
        seen = []
        while not any(m.get("event") == "completion:chunk" for m in seen):
            seen.append(client.recv())  # the call, its result, then the answer's first words
        events = [m["event"] for m in seen]
        assert events.index("completion:tool_call") < events.index("completion:tool_result")
        stop = client.request("completion:cancel", {"request_id": request_id})
        assert data_of(stop)["status"] == "cancelled"
        after = []
        while not any(m.get("event") == "completion:cancelled" for m in after):
            after.append(client.recv())
        # The model call is dropped upstream: the answer stops where it was.
        wait_until(lambda: fake_openai.disconnects >= 1, "the call to be dropped upstream")
        words = "".join(m["data"]["delta"] for m in seen + after
                        if m.get("event") == "completion:chunk")
        assert words.startswith("word0") and "word39" not in words
        status = data_of(client.request("completion:status", {"request_id": request_id}))
        assert status["status"] == "cancelled"
        # Nothing of the stopped turn is stored, so no call is left without its result ...
        assert stored(client, "ms") == []
        # ... and the session's next message is answered by a model that checks the history.
        nxt = data_of(client.request("completion:request", {"prompt": "Still there?",
                                                            "model": "echo",
                                                            "session_id": "ms"}))
        assert nxt["text"].startswith("turn 1")
        rows = wait_until(lambda: stored(client, "ms"), "the next turn to be stored")
        assert [m["role"] for m in rows] == ["user", "assistant"]


def test_an_agent_interrupted_during_a_tool_call_stores_its_message_once_and_no_lone_call(
        daemon, fake_openai, tmp_path):
    hits = tmp_path / "hits.txt"
    message = "Count it.\n/tool count:hit " + orjson.dumps({"file": str(hits),
                                                           "block": True}).decode()
    with daemon.client(timeout=30) as client:
        agent = data_of(client.request("agent:spawn", {"agent_id": "counter", "config": {
            "name": "counter", "model": "echo", "tools": ["count:hit"]}}))
        data_of(client.request("agent:send", {"agent_id": "counter", "content": message}))
        wait_until(lambda: hits.exists() and hits.read_text() == "hit\n", "the tool call")
        stopped = data_of(client.request("agent:interrupt", {"agent_id": "counter"}))
        assert stopped["interrupted"] is True
        status = data_of(client.request("completion:status",
                                        {"request_id": stopped["request_id"]}))
        assert status["status"] == "cancelled"
        session = agent["session_id"]
        rows = wait_until(lambda: len(stored(client, session)) >= 2 and stored(client, session),
                          "the interrupted turn to be recorded")
        assert [(m["role"], m["content"]) for m in rows] == [("user", message),
                                                             ("assistant", NOTE)]
        assert not any(m.get("tool_calls") or m["role"] == "tool" for m in rows)
        reply = data_of(client.request("agent:send", {"agent_id": "counter",
                                                      "content": "What happened?",
                                                      "wait": True}))["reply"]
        assert reply["text"].startswith("turn 2")  # the fake server accepted the history
        rows = wait_until(lambda: len(stored(client, session)) >= 4 and stored(client, session),
                          "the next turn to be stored")
    assert [m["role"] for m in rows] == ["user", "assistant", "user", "assistant"]
    assert [m["content"] for m in rows].count(message) == 1
    assert hits.read_text() == "hit\n"  # the interrupted call was not run again
