"""A tool loop survives kill -9: the call cut off between its start and its result is not run
again (its tool is not idempotent: the model is told it was interrupted), and the conversation
is valid for the next model call (tests/fake_openai_server.py refuses, as OpenAI does, a tool
call without its result). Real daemon processes over their socket."""
from __future__ import annotations

import time
from pathlib import Path

import orjson
import pytest

from conftest import data_of
from fake_openai_server import FakeOpenAIServer

PLUGINS = Path(__file__).parent / "plugins"


@pytest.fixture
def fake_openai():
    with FakeOpenAIServer() as server:
        yield server


def wait_until(condition, timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_kill_9_between_a_call_and_its_result_neither_repeats_it_nor_leaves_it_dangling(
        daemon_factory, fake_openai, tmp_path):
    config = {"daemon": {"plugin_dirs": [str(PLUGINS / "tool_loop")]},
              "plugins": {"completion": {"aliases": {"echo": {
                  "model": "openai/echo", "api_base": fake_openai.api_base,
                  "api_key": "sk-test"}}}}}
    hits = tmp_path / "hits.txt"
    arguments = orjson.dumps({"file": str(hits), "block": True}).decode()
    request = {"prompt": f"Count it.\n/tool count:hit {arguments}", "tools": ["count:hit"],
               "request_id": "cut-off", "session_id": "cut"}
    first = daemon_factory(config=config, subdir="d")
    with first.client(timeout=30) as client:
        client.send("completion:async", request, correlation_id="c")
        wait_until(lambda: hits.exists() and hits.read_text() == "hit\n", what="the call")
        first.proc.kill()
        first.wait()

    second = daemon_factory(config=config, subdir="d")
    with second.client(timeout=30) as client:
        result = data_of(client.request("completion:request", request))
        wait_until(lambda: len(client.request("conversation:get", {"session_id": "cut"})
                               .get("data", {}).get("messages", [])) >= 4, what="the turn")
        turns = data_of(client.request("conversation:get", {"session_id": "cut"}))["messages"]
        after = data_of(client.request("completion:request", {
            "prompt": "What happened?", "model": "echo", "session_id": "cut"}))
    assert hits.read_text() == "hit\n"  # run once, before the kill
    call = result["tool_calls"][0]
    assert result["resumed"] is True
    assert (call["name"], call["ok"], call["result"]) == ("count:hit", False, "interrupted")
    assert "interrupted" in result["text"]
    assert [t["role"] for t in turns] == ["user", "assistant", "tool", "assistant"]
    assert turns[2]["tool_call_id"] == turns[1]["tool_calls"][0]["id"]
    assert after["text"].startswith("turn 2")  # the fake server accepted the history
