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


# ---- conversations --------------------------------------------------------------------------

def test_a_conversation_written_on_one_node_is_read_in_full_on_the_other(two_nodes):
    a, b = two_nodes
    with a.client(timeout=60) as client:
        first = data_of(client.request("completion:request", {
            "prompt": "my name is Ada", "session_id": "talk-1"}))
        second = data_of(client.request("completion:request", {
            "prompt": "what did I say?", "session_id": "talk-1"}))
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
    with b.client(timeout=60) as client:
        data_of(client.request("completion:request", {"prompt": "and now?",
                                                      "session_id": "moved"}))
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
