"""The tool-calling loop of completion:request: the offline model's `/tool` lines, parallel calls,
failures the model reads, max_tool_steps, the streamed pushes, the real litellm path against
tests/fake_openai_server.py, and an agent profile with tools.

In-process daemons with the real tools plugin; the first test goes through the Unix socket.
Durability across kill -9 is in test_tool_loop_resume.py (daemon processes).
"""
from __future__ import annotations

import re
import time
from pathlib import Path

import orjson
import pytest

from conftest import ROOT, data_of, error_of, run_python_blocks
from fake_openai_server import FakeOpenAIServer

pytestmark = pytest.mark.daemon("inprocess")

PLUGINS = Path(__file__).parent / "plugins"
LOOKUP = 'Look it up.\n/tool state:get {"namespace": "tools", "key": "answer"}'


@pytest.fixture
def fake_openai():
    with FakeOpenAIServer() as server:
        yield server


@pytest.fixture
def daemon(daemon_factory):
    """A daemon with the test plugins of tests/plugins/tool_loop (tools to offer)."""
    return daemon_factory(with_test_tools())


def with_test_tools(api_base: str | None = None) -> dict:
    config: dict = {"daemon": {"plugin_dirs": [str(PLUGINS / "tool_loop")]}}
    if api_base is not None:
        config["plugins"] = {"completion": {"aliases": {
            name: {"model": f"openai/{name}", "api_base": api_base, "api_key": "sk-test"}
            for name in ("echo", "looping")}}}
    return config


def test_the_offline_model_looks_up_a_value_through_the_socket(daemon):
    from ksi_client import SyncClient
    with SyncClient(daemon.socket_path, timeout=30) as client:
        client.emit("state:set", {"namespace": "tools", "key": "answer", "value": 7731})
        result = client.emit("completion:request", {"prompt": LOOKUP, "tools": ["state:get"]})
    call = result["tool_calls"][0]
    assert call["name"] == "state:get" and call["ok"] is True
    assert call["arguments"] == {"namespace": "tools", "key": "answer"}
    assert call["result"]["value"] == 7731 and call["result"]["found"] is True
    assert "7731" in result["text"]


def test_the_conversation_keeps_the_calls_in_openai_shape_for_the_next_turn(daemon):
    with daemon.client() as client:
        data_of(client.request("state:set", {"namespace": "tools", "key": "answer",
                                             "value": 7731}))
        data_of(client.request("completion:request", {"prompt": LOOKUP, "tools": ["state:get"],
                                                      "session_id": "shape"}))
        turns = wait_for_turns(client, "shape", 4)
        later = data_of(client.request("completion:request", {"prompt": "And now?",
                                                              "session_id": "shape"}))
    assert [t["role"] for t in turns] == ["user", "assistant", "tool", "assistant"]
    asking, answer = turns[1], turns[2]
    assert asking["content"] is None
    assert asking["tool_calls"][0]["function"]["name"] == "state_get"
    assert answer["tool_call_id"] == asking["tool_calls"][0]["id"]
    assert orjson.loads(answer["content"])["value"] == 7731
    assert "turn 2" in later["text"]  # the offline model saw the earlier turn


def test_parallel_calls_of_one_step_run_concurrently(daemon_factory):
    daemon = daemon_factory(with_test_tools())
    prompt = "Both at once.\n" + "\n".join(
        '/tool barrier:wait {"name": "both", "parties": 2}' for _ in range(2))
    with daemon.client(timeout=30) as client:
        result = data_of(client.request("completion:request", {"prompt": prompt,
                                                               "tools": ["barrier:wait"]}))
    calls = result["tool_calls"]
    # Run one after the other, the first would wait for the second until its 5 s limit.
    assert [(c["name"], c["ok"], c["step"]) for c in calls] == [("barrier:wait", True, 1)] * 2
    assert sorted(c["result"]["arrived"] for c in calls) == [2, 2]
    assert len({c["call_id"] for c in calls}) == 2


def test_failing_calls_are_results_the_model_reads(daemon):
    prompt = "\n".join(["Try these.", "/tool state:get {not json",
                        '/tool state:get {"namespace": "tools"}',
                        '/tool state:clear {"namespace": "tools"}'])
    with daemon.client() as client:
        result = data_of(client.request("completion:request", {"prompt": prompt,
                                                               "tools": ["state:get"]}))
        health = data_of(client.request("system:health"))
    codes = [(c["name"], c["ok"], (c["error"] or {}).get("code")) for c in result["tool_calls"]]
    assert codes == [("state:get", False, "validation_error"),
                     ("state:get", False, "validation_error"),
                     ("state:clear", False, "not_found")]  # not offered: refused, not run
    for code in ("validation_error", "not_found"):
        assert code in result["text"]
    assert health["status"] == "healthy"


def test_unknown_tools_fail_the_request_with_not_found_naming_them(daemon):
    with daemon.client() as client:
        error = error_of(client.request("completion:request", {
            "prompt": "hi", "tools": ["state:get", "no:such:tool"]}))
        still = data_of(client.request("completion:request", {"prompt": "hi"}))
    assert error["code"] == "not_found" and "no:such:tool" in error["message"]
    assert still["tool_calls"] == []


def test_streaming_pushes_the_call_and_its_result_before_the_text(daemon):
    with daemon.client() as client:
        data_of(client.request("state:set", {"namespace": "tools", "key": "answer",
                                             "value": 7731}))
        client.send("completion:request", {"prompt": LOOKUP, "tools": ["state:get"],
                                           "stream": True}, correlation_id="streamed")
        seen = []
        while True:
            message = client.recv()
            seen.append(message)
            if message["type"] == "reply":
                break
    events = [m["event"] for m in seen if m["type"] == "event"]
    assert all(m["correlation_id"] == "streamed" for m in seen if m["type"] == "event")
    call, result = events.index("completion:tool_call"), events.index("completion:tool_result")
    assert call < result < events.index("completion:chunk")
    pushed = seen[result]["data"]
    assert pushed["name"] == "state:get" and pushed["result"]["value"] == 7731
    chunks = [m["data"] for m in seen if m.get("event") == "completion:chunk"]
    assert [c["index"] for c in chunks] == list(range(len(chunks)))
    assert "".join(c["delta"] for c in chunks) == seen[-1]["data"]["text"]


@pytest.mark.parametrize("stream", [False, True])
def test_litellm_calls_tools_of_an_openai_compatible_server(daemon_factory, fake_openai,
                                                            stream):
    daemon = daemon_factory(with_test_tools(fake_openai.api_base))
    with daemon.client(timeout=30) as client:
        data_of(client.request("state:set", {"namespace": "tools", "key": "answer",
                                             "value": 7731}))
        result = data_of(client.request("completion:request", {
            "prompt": LOOKUP, "model": "echo", "tools": ["state:get"], "stream": stream}))
    assert result["tool_calls"][0]["name"] == "state:get"
    assert result["tool_calls"][0]["arguments"] == {"namespace": "tools", "key": "answer"}
    assert result["text"].startswith("tool results: ") and "7731" in result["text"]
    first, second = fake_openai.calls_to("echo")[-2:]
    assert [t["function"]["name"] for t in first["tools"]] == ["state_get"]
    assert first["tools"][0]["function"]["parameters"]["type"] == "object"
    asked, answered = second["messages"][-2:]
    assert asked["tool_calls"][0]["id"] == answered["tool_call_id"]


def test_a_model_that_never_stops_calling_ends_with_timeout_and_its_transcript(
        daemon_factory, fake_openai):
    daemon = daemon_factory(with_test_tools(fake_openai.api_base))
    with daemon.client(timeout=30) as client:
        error = error_of(client.request("completion:request", {
            "prompt": LOOKUP, "model": "looping", "tools": ["state:get"],
            "max_tool_steps": 3}))
        status = data_of(client.request("completion:status"))
    assert error["code"] == "timeout" and "max_tool_steps" in error["message"]
    details = error["details"]
    assert [c["step"] for c in details["tool_calls"]] == [1, 2, 3]
    assert [m["role"] for m in details["transcript"]] == ["assistant", "tool"] * 3
    assert len(fake_openai.calls_to("looping")) == 4  # three rounds, then the one refused
    assert status["failed"] == 1


def test_an_agent_profile_with_tools_uses_them_in_its_turn(daemon):
    with daemon.client(timeout=30) as client:
        data_of(client.request("state:set", {"namespace": "tools", "key": "answer",
                                             "value": 7731}))
        agent = data_of(client.request("agent:spawn", {
            "config": {"name": "looker", "tools": ["state:get"]}, "agent_id": "looker"}))
        data_of(client.request("agent:send", {"agent_id": agent["agent_id"],
                                              "content": LOOKUP}))
        session = agent["session_id"]
        turns = wait_for_turns(client, session, 4)
    assert [t["role"] for t in turns] == ["user", "assistant", "tool", "assistant"]
    assert "7731" in turns[-1]["content"]


def wait_for_turns(client, session_id: str, count: int, timeout: float = 20.0) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        reply = client.request("conversation:get", {"session_id": session_id})
        turns = reply.get("data", {}).get("messages", [])
        if len(turns) >= count or time.monotonic() > deadline:
            return turns
        time.sleep(0.05)


def test_a_call_left_without_its_result_in_the_store_is_answered_before_the_model_sees_it(
        daemon_factory, fake_openai):
    daemon = daemon_factory(with_test_tools(fake_openai.api_base))
    call = {"id": "c-cut", "type": "function",
            "function": {"name": "state_get", "arguments": "{}"}}
    with daemon.client(timeout=30) as client:
        for turn in ({"role": "user", "content": "look"},
                     {"role": "assistant", "content": None, "tool_calls": [call]}):
            data_of(client.request("conversation:append", {"session_id": "cut", **turn}))
        result = data_of(client.request("completion:request", {
            "prompt": "go on", "model": "echo", "session_id": "cut"}))
    sent = fake_openai.calls_to("echo")[-1]["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "tool", "user"]
    assert sent[2]["tool_call_id"] == "c-cut" and "interrupted" in sent[2]["content"]
    assert result["text"].startswith("turn 2")


def test_every_python_block_of_the_tool_loop_doc_runs_against_a_daemon(daemon, tmp_path):
    text = (ROOT / "docs" / "TOOLS_LOOP.md").read_text(encoding="utf-8")
    blocks = re.findall(r"^```python\n(.*?)^```", text, re.S | re.M)
    assert len(blocks) == 2
    printed = run_python_blocks(blocks, daemon.socket_path, tmp_path, "TOOLS_LOOP")
    assert printed[0].startswith("state:get 7731")
    assert "['user', 'assistant', 'tool', 'assistant']" in printed[1]
