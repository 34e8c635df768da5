"""The tools plugin: tools:list, tools:resolve and tools:execute for KSI events and plugin tools
(tests/plugins/tool_kit registers tools and hooks, and sends the internal events as the
completion loop does)."""
from __future__ import annotations

import time

import pytest

from conftest import data_of, error_of
from test_plugins import plugin_dir_config

pytestmark = pytest.mark.daemon("inprocess")


@pytest.fixture
def client(daemon_factory):
    daemon = daemon_factory(plugin_dir_config("tool_kit"))
    with daemon.client(timeout=30) as client:
        yield client


def call(client, name, arguments=None, **extra):
    return data_of(client.request("tool_kit:call", {"name": name, "arguments": arguments or {},
                                                    "call_id": "c-1", **extra}))


def test_list_shows_events_with_schemas_and_marks_the_dangerous_and_internal(client):
    listed = data_of(client.request("tools:list"))
    tools = {t["name"]: t for t in listed["tools"]}
    assert listed["count"] == len(listed["tools"])
    get = tools["state:get"]
    assert get["model_name"] == "state_get" and get["source"] == "event"
    assert "namespace" in get["parameters"]["properties"] and get["explicit_only"] is False
    assert tools["system:shutdown"]["explicit_only"] is True
    assert tools["state:clear"]["explicit_only"] is True
    assert tools["agent:inbox"]["explicit_only"] is True  # internal
    assert tools["tools:execute"]["explicit_only"] is True
    shout = tools["kit:shout"]
    assert shout["source"] == "plugin:tool_kit" and shout["idempotent"] is True
    assert shout["parameters"]["properties"]["words"]["type"] == "array"
    assert shout["description"].startswith("Upper-case")
    # the second tool whose model name collides was refused
    assert "kit_shout" not in tools and tools["kit:shout"]["model_name"] == "kit_shout"


def test_clients_may_not_send_resolve_or_execute(client):
    for event in ("tools:execute", "tools:resolve"):
        reply = client.request(event, {"name": "state:get", "names": [], "call_id": "x"})
        assert error_of(reply)["code"] == "forbidden"
    assert data_of(client.request("system:health"))["status"] == "healthy"


def test_resolve_by_ksi_name_and_model_name_and_reports_unknown_names(client):
    resolved = data_of(client.request("tool_kit:resolve", {
        "names": ["state:get", "state_set", "kit_shout", "system:shutdown", "no:such"]}))
    assert [t["name"] for t in resolved["tools"]] == \
        ["state:get", "state:set", "kit:shout", "system:shutdown"]
    assert resolved["unknown"] == ["no:such"]


def test_an_event_tool_round_trip_through_state(client):
    done = call(client, "state:set", {"namespace": "tools", "key": "answer", "value": 7731})
    assert done["ok"] is True and done["error"] is None, done["error"]
    assert done["call_id"] == "c-1"
    got = call(client, "state:get", {"namespace": "tools", "key": "answer"})
    assert got["ok"] is True and got["result"]["value"] == 7731
    assert got["duration_ms"] >= 0 and got["annotations"] == {"seen_by": "tool_kit", "ok": True}


def test_failures_are_results_not_errors(client):
    bad = call(client, "state:get", {"namespace": "tools"})  # no key
    assert bad["ok"] is False and bad["error"]["code"] == "validation_error"
    bad = call(client, "kit:shout", {"words": "not a list"})
    assert bad["error"]["code"] == "validation_error"
    assert call(client, "no:such")["error"]["code"] == "not_found"
    raised = call(client, "kit:explode")
    assert raised["error"]["code"] == "handler_error" and "blew up" in raised["error"]["message"]
    slow = call(client, "kit:sleep")
    assert slow["error"]["code"] == "timeout" and "0.2 s" in slow["error"]["message"]
    odd = call(client, "kit:unencodable")
    assert odd["ok"] is False and odd["error"]["code"] == "handler_error"
    assert "not JSON" in odd["error"]["message"]
    assert odd["annotations"]["ok"] is False
    assert call(client, "state:get", {"namespace": "tools", "key": "x"}, timeout_s=5)["ok"]
    assert data_of(client.request("system:health"))["status"] == "healthy"


def test_a_malformed_execute_request_gets_a_coded_error(client):
    reply = client.request("tool_kit:call", {"name": "state:get", "arguments": "nope"})
    assert error_of(reply)["code"] == "validation_error"


def test_pre_execute_changes_arguments_and_refuses(client):
    shouted = call(client, "kit:shout", {"words": ["hi"]})
    assert shouted["result"] == {"shouted": ["HI", "AMEN"]}
    refused = call(client, "kit:shout", {"words": ["secret"]})
    assert refused["ok"] is False and refused["error"]["code"] == "forbidden"


def test_an_agents_publish_carries_the_agent_as_sender(client):
    sent = call(client, "message:publish", {"topic": "news", "content": "hello",
                                            "sender": "the-boss"}, agent_id="scout")
    assert sent["ok"] is True, sent
    history = data_of(client.request("message:history", {"topic": "news"}))
    assert [m["sender"] for m in history["messages"]] == ["scout"]


def test_the_documented_plugin_is_the_example_and_works(daemon_factory):
    from pathlib import Path
    from test_docs import FILE_BLOCK
    root = Path(__file__).resolve().parent.parent
    blocks = dict(m.group("path", "code") for m in FILE_BLOCK.finditer(
        (root / "docs" / "TOOLS.md").read_text(encoding="utf-8")))
    example = "examples/tools/word_tools.py"
    assert blocks[example] == (root / example).read_text(encoding="utf-8")
    config = plugin_dir_config("tool_kit")
    config["daemon"]["plugin_dirs"].append(str(root / "examples" / "tools"))
    with daemon_factory(config).client(timeout=30) as client:
        tools = {t["name"]: t for t in data_of(client.request("tools:list"))["tools"]}
        assert tools["words:count"]["model_name"] == "words_count"
        assert tools["words:count"]["source"] == "plugin:word_tools"
        counted = call(client, "words:count", {"text": "  three little words "})
        assert counted["ok"] and counted["result"] == {"words": 3}
        assert counted["annotations"]["checked_by"] == "word_tools"
        refused = call(client, "state:clear", {"namespace": "x"}, agent_id="scout")
        assert refused["error"]["code"] == "forbidden"


def test_a_failed_plugins_tools_leave_the_registry(daemon_factory):
    daemon = daemon_factory(plugin_dir_config("fragile_tools"))
    watcher = daemon.client(timeout=30)
    data_of(watcher.request("system:subscribe", {"patterns": ["system:plugin_failed"]}))
    with daemon.client(timeout=30) as client:
        def names():
            return {t["name"] for t in data_of(client.request("tools:list"))["tools"]}
        assert {"fragile:ping", "fragile:break", "state:get"} <= names()
        data_of(client.request("fragile:break"))
        deadline = time.monotonic() + 10
        while not any(p["name"] == "fragile_tools" and p["state"] == "failed"
                      for p in data_of(client.request("system:plugins"))["plugins"]):
            assert time.monotonic() < deadline, "the plugin did not fail"
            time.sleep(0.05)
        left = names()
        assert "fragile:ping" not in left and "fragile:break" not in left
        assert "state:get" in left  # the others' tools stay
        refused = error_of(client.request("completion:request", {"prompt": "x",
                                                                 "tools": ["fragile:ping"]}))
        assert refused["code"] == "not_found" and "fragile:ping" in refused["message"]
    # Subscribers were told (an MCP host's tool list follows this).
    with watcher:
        told = watcher.recv()
    assert told["event"] == "system:plugin_failed" and told["data"]["plugin"] == "fragile_tools"
    assert "broken on purpose" in told["data"]["error"]
