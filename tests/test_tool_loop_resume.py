"""A tool loop survives kill -9: the call cut off between its start and its result is not run
again when its tool is not idempotent (the model is told it was interrupted), and is run again
when it is (count:again, the same counting tool declared idempotent), and the conversation
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


def _kill_9_mid_call_then_restart(daemon_factory, fake_openai, hits: Path, tool: str,
                                  arguments: dict) -> tuple[dict, list[dict], dict]:
    """Start `tool`'s call, kill -9 the daemon while it runs, restart: (the resumed request's
    result, the session's stored turns, the answer to a next message in that session)."""
    config = {"daemon": {"plugin_dirs": [str(PLUGINS / "tool_loop")]},
              "plugins": {"completion": {"aliases": {"echo": {
                  "model": "openai/echo", "api_base": fake_openai.api_base,
                  "api_key": "sk-test"}}}}}
    line = orjson.dumps({"file": str(hits), **arguments}).decode()
    request = {"prompt": f"Count it.\n/tool {tool} {line}", "tools": [tool],
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
    return result, turns, after


def test_kill_9_between_a_call_and_its_result_neither_repeats_it_nor_leaves_it_dangling(
        daemon_factory, fake_openai, tmp_path):
    hits = tmp_path / "hits.txt"
    result, turns, after = _kill_9_mid_call_then_restart(daemon_factory, fake_openai, hits,
                                                         "count:hit", {"block": True})
    assert hits.read_text() == "hit\n"  # run once, before the kill
    call = result["tool_calls"][0]
    assert result["resumed"] is True
    assert (call["name"], call["ok"], call["result"]) == ("count:hit", False, "interrupted")
    assert "interrupted" in result["text"]
    assert [t["role"] for t in turns] == ["user", "assistant", "tool", "assistant"]
    assert turns[2]["tool_call_id"] == turns[1]["tool_calls"][0]["id"]
    assert after["text"].startswith("turn 2")  # the fake server accepted the history


def test_kill_9_mid_call_of_an_idempotent_tool_runs_it_again_after_the_restart(
        daemon_factory, fake_openai, tmp_path):
    hits = tmp_path / "hits.txt"
    result, turns, after = _kill_9_mid_call_then_restart(daemon_factory, fake_openai, hits,
                                                         "count:again", {"block_first": True})
    assert hits.read_text() == "hit\nhit\n"  # cut off by the kill, then run again
    call = result["tool_calls"][0]
    assert result["resumed"] is True
    assert (call["name"], call["ok"], call["result"]) == ("count:again", True, {"hits": 2})
    assert "interrupted" not in result["text"] and '{"hits":2}' in result["text"]
    assert [t["role"] for t in turns] == ["user", "assistant", "tool", "assistant"]
    assert turns[2]["tool_call_id"] == turns[1]["tool_calls"][0]["id"]
    assert after["text"].startswith("turn 2")
