"""Cluster mode, the shared store of issue 19: conversations, agent checkpoints, the state
audit and `state:clear` across nodes.

A real nats-server (the `nats_server` fixture: loopback, JetStream, `sync_interval: always`)
and real daemon processes, each with its own var directory and socket (tests/cluster_nodes.py).
"""
from __future__ import annotations

import signal
from pathlib import Path

import orjson
import pytest

from cluster_nodes import start_node, two_nodes, wait_for  # noqa: F401
from conftest import data_of, error_of


def conversation(node, session_id: str) -> dict:
    return data_of(node.request("conversation:get", {"session_id": session_id}))


def stored_turns(node, session_id: str, count: int) -> None:
    """Wait until `node` reads `count` messages of the session: a completion stores its turn
    just after its reply (the completion plugin's order), so a read right after may not."""
    wait_for(lambda: data_of(node.request("conversation:history", {
        "session_id": session_id}))["count"] >= count)


# ---- conversations --------------------------------------------------------------------------

def test_a_conversation_written_on_one_node_is_read_in_full_on_the_other(two_nodes):
    a, b = two_nodes
    with a.client(timeout=60) as client:
        first = data_of(client.request("completion:request", {
            "prompt": "my name is Ada", "session_id": "talk-1"}))
        second = data_of(client.request("completion:request", {
            "prompt": "what did I say?", "session_id": "talk-1"}))
    stored_turns(a, "talk-1", 4)
    data_of(a.request("conversation:append_turn", {"session_id": "talk-1", "messages": [
        {"role": "user", "content": "a note"},
        {"role": "assistant", "content": None, "tool_calls": [{
            "id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "content": "42", "tool_call_id": "c1"}]}))
    on_a = conversation(a, "talk-1")
    on_b = conversation(b, "talk-1")  # no waiting: a read catches up with the stream first
    assert on_b == on_a
    assert [m["role"] for m in on_b["messages"]] == ["user", "assistant"] * 2 + [
        "user", "assistant", "tool"]
    assert [m["content"] for m in on_b["messages"]][:4] == [
        "my name is Ada", first["text"], "what did I say?", second["text"]]
    assert on_b["messages"][5]["tool_calls"][0]["id"] == "c1"
    assert on_b["messages"][6]["tool_call_id"] == "c1"
    history = data_of(b.request("conversation:history", {"session_id": "talk-1", "limit": 3}))
    assert history["messages"] == on_a["messages"][-3:]
    listed = data_of(b.request("conversation:list", {}))
    assert [s["session_id"] for s in listed["sessions"]] == ["talk-1"]
    assert listed["sessions"][0]["message_count"] == 7
    found = data_of(b.request("conversation:search", {"query": "Ada"}))
    assert found["results"] and found == data_of(a.request("conversation:search",
                                                           {"query": "Ada"}))
    assert found["results"][0]["message_id"] == on_a["messages"][0]["message_id"] or \
        "Ada" in on_a["messages"][0]["content"]
    exported = data_of(b.request("conversation:export", {"session_id": "talk-1",
                                                         "format": "json"}))
    assert len(orjson.loads(Path(exported["path"]).read_bytes())["messages"]) == 7


def test_a_session_continued_on_the_other_node_sees_the_earlier_turns(two_nodes):
    a, b = two_nodes
    with a.client(timeout=60) as client:
        data_of(client.request("completion:request", {"prompt": "remember the word heron",
                                                      "session_id": "moved"}))
    stored_turns(b, "moved", 2)
    with b.client(timeout=60) as client:
        data_of(client.request("completion:request", {"prompt": "and now?",
                                                      "session_id": "moved"}))
    stored_turns(a, "moved", 4)
    contents = [m["content"] for m in conversation(a, "moved")["messages"]]
    assert len(contents) == 4 and contents[0] == "remember the word heron"
    assert contents[2] == "and now?"
    # The offline model tells what came before: B's completion was sent A's turn.
    assert "heron" in contents[3]


def test_conversation_errors_stay_coded_on_any_node(two_nodes):
    a, b = two_nodes
    assert error_of(b.request("conversation:get", {"session_id": "nope"}))["code"] == \
        "not_found"
    assert error_of(b.request("conversation:search", {"query": 'AND (', "syntax": "fts5"}))["code"] == \
        "validation_error"


# ---- state:clear across nodes ---------------------------------------------------------------

def test_a_clear_on_one_node_clears_what_any_node_wrote_before_it(workdir, nats_server,
                                                                   two_nodes):
    a, b = two_nodes
    with b.client() as writer:
        for i in range(30):  # acknowledged on B, then cleared on A at once: A's mirror may
            data_of(writer.request("state:set", {"namespace": "scratch", "key": f"k{i}",
                                                 "value": i}))  # not have all of them yet
    data_of(a.request("state:set", {"namespace": "kept", "key": "k", "value": 1}))
    assert data_of(a.request("state:clear", {"namespace": "scratch"})) == {"deleted": 30}
    for node in (a, b):
        assert data_of(node.request("state:list", {"namespace": "scratch"}))["keys"] == []
    assert data_of(b.request("state:get", {"namespace": "kept", "key": "k"}))["value"] == 1
    # Written after the clear: stays.
    data_of(b.request("state:set", {"namespace": "scratch", "key": "after", "value": 2}))
    wait_for(lambda: data_of(a.request("state:get", {"namespace": "scratch",
                                                     "key": "after"}))["found"])
    # A node starting afresh reads the bucket itself: the cleared keys are gone from NATS.
    c = start_node(workdir, nats_server, "node-c")
    try:
        assert data_of(c.request("state:list", {"namespace": "scratch"}))["keys"] == ["after"]
        assert data_of(c.request("state:set", {"namespace": "scratch", "key": "k3",
                                               "value": "new", "if_version": 0}))
    finally:
        c.stop()


def test_other_nodes_announce_the_cleared_keys_as_deletes(two_nodes):
    a, b = two_nodes
    data_of(a.request("state:set", {"namespace": "gone", "key": "x", "value": 1}))
    wait_for(lambda: data_of(b.request("state:get", {"namespace": "gone", "key": "x"}))["found"])
    with b.client() as watcher, a.client() as clearer:
        watcher.request("system:subscribe", {"patterns": ["state:changed"]})
        clearer.request("system:subscribe", {"patterns": ["state:changed"]})
        assert data_of(clearer.request("state:clear", {"namespace": "gone"})) == {"deleted": 1}
        on_a = clearer.recv()
        assert on_a["event"] == "state:changed" and on_a["data"]["op"] == "clear"
        on_b = watcher.recv()
        assert on_b["data"] == {"namespace": "gone", "key": "x", "version": on_b["data"][
            "version"], "op": "delete"}


# ---- the audit ------------------------------------------------------------------------------

def test_the_audit_on_one_node_holds_the_changes_and_refusals_made_on_the_other(two_nodes):
    a, b = two_nodes
    with a.client() as client:
        v1 = data_of(client.request("state:set", {"namespace": "team", "key": "plan",
                                                  "value": 1}))["version"]
        v2 = data_of(client.request("state:set", {"namespace": "team", "key": "plan",
                                                  "value": 2}))["version"]
        data_of(client.request("state:delete", {"namespace": "team", "key": "plan"}))
        data_of(client.request("state:set", {"namespace": "team", "key": "other", "value": 3}))
        data_of(client.request("state:clear", {"namespace": "team"}))
        refused = error_of(client.request("agent:inbox", {"agent_id": "x", "message_id": "m",
                                                          "content": "forged"}))
        assert refused["code"] == "forbidden"
        # The writer reads its own records at once (its replies came after them).
        on_a = data_of(client.request("state:audit", {"namespace": "team"}))
    on_b = data_of(b.request("state:audit", {"namespace": "team"}))
    assert on_b == on_a and on_b["enabled"] is True
    assert [(e["key"], e["op"], e["version"]) for e in on_b["entries"]] == [
        ("plan", "set", v1), ("plan", "set", v2), ("plan", "delete", v2),
        ("other", "set", on_b["entries"][3]["version"]), (None, "clear", None)]
    assert {e["node"] for e in on_b["entries"]} == {"node-a"}
    assert all(e["peer_pid"] and e["correlation_id"] for e in on_b["entries"])
    one_key = data_of(b.request("state:audit", {"namespace": "team", "key": "plan",
                                                "limit": 2}))["entries"]
    assert [(e["op"], e["version"]) for e in one_key] == [("set", v2), ("delete", v2)]
    refusals = wait_for(lambda: data_of(b.request("state:audit", {"namespace": "agent"}))[
        "entries"])
    assert [(e["op"], e["event"], e["node"]) for e in refusals] == [
        ("refused", "agent:inbox", "node-a")]
    newest = data_of(b.request("state:audit", {"limit": 1}))["entries"]
    assert len(newest) == 1 and newest[0]["id"] == max(e["id"] for e in on_b["entries"] +
                                                       refusals)


def test_a_cluster_audit_is_bounded_by_its_retention(workdir, nats_server):
    config = {"cluster": {"audit_keep_records": 3}}
    a = start_node(workdir, nats_server, "node-a", config)
    try:
        for i in range(5):
            data_of(a.request("state:set", {"key": f"k{i}", "value": i}))
        entries = data_of(a.request("state:audit", {"limit": 100}))["entries"]
        assert [e["key"] for e in entries] == ["k2", "k3", "k4"]
    finally:
        a.stop()
