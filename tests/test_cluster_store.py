"""Cluster mode, the shared store of issue 19: conversations, agent checkpoints, the state
audit and `state:clear` across nodes.

A real nats-server (the `nats_server` fixture: loopback, JetStream, `sync_interval: always`)
and real daemon processes, each with its own var directory and socket (tests/cluster_nodes.py).
"""
from __future__ import annotations

import asyncio
import contextlib
import signal
from pathlib import Path

import orjson
import pytest

from cluster_nodes import shared_agent_store, start_node, two_nodes, wait_for  # noqa: F401
from conftest import data_of, error_of
from ksi_daemon.protocol import KSIError


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
    bad_syntax = {"query": "AND (", "syntax": "fts5"}
    assert error_of(b.request("conversation:search", bad_syntax))["code"] == "validation_error"



def test_conversations_answer_unavailable_without_nats_and_catch_up_after(two_nodes,
                                                                          nats_server):
    a, b = two_nodes
    turn = {"session_id": "gap", "messages": [{"role": "user", "content": "before"}]}
    data_of(a.request("conversation:append_turn", turn))
    nats_server.stop()
    wait_for(lambda: not data_of(a.request("system:health"))["cluster"]["reachable"])
    with a.client() as client:
        for event, data in (("conversation:append_turn", turn),
                            ("conversation:get", {"session_id": "gap"}),
                            ("conversation:list", {})):
            assert error_of(client.request(event, data))["code"] == "unavailable"
    nats_server.start()
    for node in (a, b):
        wait_for(lambda node=node: data_of(node.request("system:health"))["cluster"][
            "jetstream"], within=30)
    data_of(b.request("conversation:append_turn", {"session_id": "gap", "messages": [
        {"role": "user", "content": "after"}]}))
    assert [m["content"] for m in conversation(a, "gap")["messages"]] == ["before", "after"]

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


def test_an_expiry_seen_by_both_nodes_is_recorded_once(two_nodes):
    a, b = two_nodes
    watchers = [a.client(), b.client()]
    try:
        for watcher in watchers:
            watcher.request("system:subscribe", {"patterns": ["state:changed"]})
        data_of(a.request("state:set", {"namespace": "brief", "key": "k", "value": 1,
                                        "ttl_s": 1}))
        for watcher in watchers:  # each node's watch took the server's marker
            while (push := watcher.recv())["data"]["op"] != "expire":
                pass
    finally:
        for watcher in watchers:
            watcher.close()
    # Each node's state:audit waits for the records it is still sending: both sent theirs.
    on_a = data_of(a.request("state:audit", {"namespace": "brief"}))["entries"]
    on_b = data_of(b.request("state:audit", {"namespace": "brief"}))["entries"]
    assert [e["op"] for e in on_b] == ["set", "expire"] and on_a == on_b


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


# ---- agent checkpoints ----------------------------------------------------------------------

def answered(checkpoint) -> list[str]:
    return [m["content"] for m in checkpoint.record["messages"] if m["state"] == "done"]


async def test_an_agents_checkpoint_written_on_one_node_is_read_through_the_seam(
        two_nodes, nats_server):
    a, b = two_nodes
    with a.client(timeout=60) as client:
        spawned = data_of(client.request("agent:spawn", {"agent_id": "scribe",
                                                         "task": "note the date"}))
        data_of(client.request("agent:send", {"agent_id": "scribe", "content": "and the time",
                                              "wait": True}))
    async with shared_agent_store(nats_server) as store:
        checkpoint = await store.read("scribe")
        assert checkpoint.record["agent"]["session_id"] == spawned["session_id"]
        assert checkpoint.record["agent"]["status"] == "running"
        assert checkpoint.record["agent"]["turns"] == 2
        assert answered(checkpoint) == ["note the date", "and the time"]
        assert [c.agent_id for c in await store.list()] == ["scribe"]
        # Its conversation is in the shared store too: what B would resume from.
    wait_for(lambda: data_of(b.request("conversation:history", {
        "session_id": spawned["session_id"]}))["count"] >= 4)


def record_of(status: str) -> dict:
    """A whole checkpoint record (agent/store_seam.py's shape)."""
    return {"agent": {"agent_id": "mover", "profile": "assistant", "config": "{}",
                      "session_id": "s-1", "status": status, "created_at": 1.0,
                      "updated_at": 2.0, "turns": 0, "messages_handled": 0, "restarts": 0,
                      "error": None},
            "messages": [{"message_id": "m-1", "seq": 1, "sender": None, "topic": None,
                          "reply_to": "direct", "content": "hi", "received_at": 1.5,
                          "state": "pending", "attempts": 0, "reply": None,
                          "request_id": None, "turn": None}],
            "schedules": []}


@contextlib.asynccontextmanager
async def local_agent_store(directory: Path):
    """The single daemon's SqliteAgentStore on an agents.db of its own."""
    from ksi_daemon.plugins.agent import store as agent_rows
    from ksi_daemon.plugins.agent.sqlite_checkpoints import SqliteAgentStore
    from ksi_daemon.storage.plugin_database import PluginDatabase
    database = PluginDatabase.open(directory / "agents.db", name="agent", synchronous="FULL",
                                   create_schema=agent_rows.create_schema, deadline_s=None,
                                   reader=False)
    try:
        yield SqliteAgentStore(database.writer)
    finally:
        await database.close()


@pytest.mark.parametrize("kind", ["kv", "sqlite"])
async def test_a_checkpoint_write_naming_a_stale_revision_is_refused(kind, nats_server,
                                                                    workdir):
    opened = shared_agent_store(nats_server) if kind == "kv" else local_agent_store(workdir)
    async with opened as store:
        first = await store.write("mover", record_of("running"), if_revision=0)
        with pytest.raises(KSIError) as taken:  # only if absent: it is not
            await store.write("mover", record_of("x"), if_revision=0)
        assert taken.value.code == "conflict"
        second = await store.write("mover", record_of("moved"), if_revision=first)
        assert second > first
        with pytest.raises(KSIError) as stale:  # another node wrote since `first`
            await store.write("mover", record_of("stale"), if_revision=first)
        assert stale.value.code == "conflict"
        assert stale.value.details["current_revision"] == second
        assert (await store.read("mover")).record == record_of("moved")
        assert [(c.agent_id, c.revision) for c in await store.list()] == [("mover", second)]
        with pytest.raises(KSIError):
            await store.delete("mover", if_revision=first)
        assert await store.delete("mover", if_revision=second) is True
        assert await store.read("mover") is None
        again = await store.write("mover", record_of("back"), if_revision=0)
        assert again > second  # a revision never repeats for an agent id


# ---- what an ack promises ----------------------------------------------------------------

async def test_acknowledged_turns_checkpoints_and_audit_survive_kill_9_and_a_nats_restart(
        workdir, nats_server):
    a = start_node(workdir, nats_server, "node-a")
    written = []
    with a.client(timeout=60) as client:
        for i in range(10):
            written.append(data_of(client.request("conversation:append_turn", {
                "session_id": f"s{i % 3}", "messages": [
                    {"role": "user", "content": f"question {i}"},
                    {"role": "assistant", "content": f"answer {i}"}]}))["message_ids"])
        data_of(client.request("agent:spawn", {"agent_id": "keeper", "task": "hold on"}))
        data_of(client.request("agent:send", {"agent_id": "keeper", "content": "still there?",
                                              "wait": True}))
        version = data_of(client.request("state:set", {"key": "k", "value": 1}))["version"]
        data_of(client.request("state:clear", {"namespace": "gone"}))
    a.stop(signal.SIGKILL)
    nats_server.restart()
    b = start_node(workdir, nats_server, "node-b")
    try:
        for i in range(3):
            messages = conversation(b, f"s{i}")["messages"]
            turns = [n for n in range(10) if n % 3 == i]
            assert [m["content"] for m in messages] == [
                text for n in turns for text in (f"question {n}", f"answer {n}")]
            assert [m["message_id"] for m in messages] == [
                message_id for n in turns for message_id in written[n]]
        audit = data_of(b.request("state:audit", {}))["entries"]
        assert [(e["op"], e["key"], e["version"]) for e in audit] == [
            ("set", "k", version), ("clear", None, None)]
        async with shared_agent_store(nats_server) as store:
            checkpoint = await store.read("keeper")
        assert answered(checkpoint) == ["hold on", "still there?"]
    finally:
        b.stop()
