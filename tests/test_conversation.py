"""The conversation store: append, history, list, get, search, export.

On the in-process daemon (tests/inprocess.py): a restart is its graceful stop and a new start
on the same var dir.
"""
from __future__ import annotations

import sqlite3
from pathlib import Path

import orjson

import pytest

from conftest import data_of, error_of


@pytest.fixture
def daemon(inprocess_daemon):
    return inprocess_daemon


def append(client, session_id: str, role: str, content: str, **extra) -> dict:
    return data_of(client.request("conversation:append", {
        "session_id": session_id, "role": role, "content": content, **extra}))


def test_turns_come_back_in_order_with_their_fields(daemon):
    with daemon.client() as client:
        first = append(client, "s-1", "user", "What is the capital of France?",
                       request_id="req-1", metadata={"agent_id": "a1"})
        second = append(client, "s-1", "assistant", "Paris.", model="echo-model",
                        usage={"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9},
                        request_id="req-1")
        assert first["session_id"] == "s-1" and second["message_id"] > first["message_id"]
        assert second["timestamp"] >= first["timestamp"]
        history = data_of(client.request("conversation:history", {"session_id": "s-1"}))
    assert [(m["role"], m["content"]) for m in history["messages"]] == [
        ("user", "What is the capital of France?"), ("assistant", "Paris.")]
    reply = history["messages"][1]
    assert reply["model"] == "echo-model" and reply["request_id"] == "req-1"
    assert reply["usage"] == {"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9}
    assert history["messages"][0]["metadata"] == {"agent_id": "a1"}


def test_history_limit_keeps_the_newest_turns_oldest_first(daemon):
    with daemon.client() as client:
        for n in range(10):
            append(client, "long", "user" if n % 2 == 0 else "assistant", f"turn {n}")
        recent = data_of(client.request("conversation:history",
                                        {"session_id": "long", "limit": 3}))
        empty = data_of(client.request("conversation:history", {"session_id": "new"}))
    assert [m["content"] for m in recent["messages"]] == ["turn 7", "turn 8", "turn 9"]
    assert empty["messages"] == [] and empty["count"] == 0


def test_a_turn_is_stored_whole_in_one_write(daemon):
    turn = [{"role": "user", "content": "Look it up.", "request_id": "r-7"},
            {"role": "assistant", "content": None, "request_id": "r-7", "tool_calls": [
                {"id": "c1", "type": "function",
                 "function": {"name": "state_get", "arguments": "{}"}}]},
            {"role": "tool", "content": '{"value": 7731}', "tool_call_id": "c1"},
            {"role": "assistant", "content": "It is 7731.", "model": "echo-model",
             "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}}]
    with daemon.client() as client:
        append(client, "whole", "system", "earlier")
        stored = data_of(client.request("conversation:append_turn",
                                        {"session_id": "whole", "messages": turn}))
        history = data_of(client.request("conversation:history", {"session_id": "whole"}))
        session = data_of(client.request("conversation:list", {}))["sessions"]
        bad = error_of(client.request("conversation:append_turn", {
            "session_id": "whole", "messages": [turn[0], {"role": "user"}]}))
        empty = error_of(client.request("conversation:append_turn",
                                        {"session_id": "whole", "messages": []}))
        after = data_of(client.request("conversation:history", {"session_id": "whole"}))
    ids = stored["message_ids"]
    assert len(ids) == 4 and ids == sorted(ids) and stored["session_id"] == "whole"
    assert [m["message_id"] for m in history["messages"][1:]] == ids
    assert [(m["role"], m["content"]) for m in history["messages"][1:]] == [
        ("user", "Look it up."), ("assistant", None), ("tool", '{"value": 7731}'),
        ("assistant", "It is 7731.")]
    assert history["messages"][2]["tool_calls"][0]["id"] == "c1"
    assert history["messages"][3]["tool_call_id"] == "c1"
    assert history["messages"][4]["model"] == "echo-model"
    whole = next(s for s in session if s["session_id"] == "whole")
    assert whole["message_count"] == 5 and whole["last_model"] == "echo-model"
    # A turn with one bad message stores nothing of it.
    assert bad["code"] == "validation_error" and empty["code"] == "validation_error"
    assert after["count"] == history["count"] == 5


def test_get_pages_through_a_conversation(daemon):
    with daemon.client() as client:
        for n in range(7):
            append(client, "paged", "user", f"message {n}")
        page1 = data_of(client.request("conversation:get",
                                       {"session_id": "paged", "limit": 3}))
        page3 = data_of(client.request("conversation:get",
                                       {"session_id": "paged", "limit": 3, "offset": 6}))
        missing = error_of(client.request("conversation:get", {"session_id": "nobody"}))
    assert [m["content"] for m in page1["messages"]] == ["message 0", "message 1", "message 2"]
    assert page1["total"] == 7 and page1["count"] == 3
    assert [m["content"] for m in page3["messages"]] == ["message 6"]
    assert missing["code"] == "not_found"


def test_list_sorts_and_pages_sessions(daemon):
    with daemon.client() as client:
        for session, turns in (("old", 1), ("busy", 3), ("newest", 2)):
            for n in range(turns):
                append(client, session, "user", f"{session} {n}", model=f"model-{session}")
        by_update = data_of(client.request("conversation:list", {}))
        by_creation = data_of(client.request("conversation:list", {"sort": "created_asc"}))
        by_size = data_of(client.request("conversation:list", {"sort": "messages_desc"}))
        page = data_of(client.request("conversation:list",
                                      {"sort": "created_asc", "limit": 1, "offset": 1}))
        bad = error_of(client.request("conversation:list", {"sort": "sideways"}))
    assert [s["session_id"] for s in by_update["sessions"]] == ["newest", "busy", "old"]
    assert [s["session_id"] for s in by_creation["sessions"]] == ["old", "busy", "newest"]
    assert [(s["session_id"], s["message_count"]) for s in by_size["sessions"]] == [
        ("busy", 3), ("newest", 2), ("old", 1)]
    assert by_update["total"] == 3 and by_update["sessions"][0]["last_model"] == "model-newest"
    assert [s["session_id"] for s in page["sessions"]] == ["busy"] and page["total"] == 3
    assert bad["code"] == "validation_error"


def test_search_finds_a_stored_turn(daemon):
    with daemon.client() as client:
        append(client, "geo", "user", "Tell me about the Rhône glacier in Switzerland")
        append(client, "geo", "assistant", "It feeds Lake Geneva.")
        append(client, "food", "user", "Which cheese comes from Switzerland?")
        found = data_of(client.request("conversation:search", {"query": "glacier"}))
        accents = data_of(client.request("conversation:search", {"query": "rhone"}))
        both = data_of(client.request("conversation:search", {"query": "switzerland"}))
        scoped = data_of(client.request("conversation:search",
                                        {"query": "switzerland", "session_id": "food"}))
        nothing = data_of(client.request("conversation:search", {"query": "volcano"}))
        quoted = data_of(client.request("conversation:search", {"query": 'lake "geneva'}))
        bad = error_of(client.request("conversation:search",
                                      {"query": "AND OR (", "syntax": "fts5"}))
        assert data_of(client.request("conversation:search", {"query": "feeds"}))["count"] == 1
    assert found["count"] == 1 and found["results"][0]["session_id"] == "geo"
    assert "[glacier]" in found["results"][0]["snippet"]
    assert accents["count"] == 1
    assert {r["session_id"] for r in both["results"]} == {"geo", "food"}
    assert [r["session_id"] for r in scoped["results"]] == ["food"]
    assert nothing == {"query": "volcano", "results": [], "count": 0}
    # A stray quote is not FTS5 syntax in plain-word queries: it is just punctuation.
    assert [r["session_id"] for r in quoted["results"]] == ["geo"]
    assert bad["code"] == "validation_error"


def test_export_writes_readable_files(daemon):
    with daemon.client() as client:
        append(client, "exp/1", "user", "Hello there, **markdown** and 東京")
        append(client, "exp/1", "assistant", "General Kenobi!", model="echo")
        as_json = data_of(client.request("conversation:export",
                                         {"session_id": "exp/1", "format": "json"}))
        as_md = data_of(client.request("conversation:export",
                                       {"session_id": "exp/1", "format": "markdown"}))
        missing = error_of(client.request("conversation:export", {"session_id": "nobody"}))
        bad = error_of(client.request("conversation:export",
                                      {"session_id": "exp/1", "format": "pdf"}))
    exports = (daemon.var_dir / "exports").resolve()
    for reply in (as_json, as_md):
        path = Path(reply["path"])
        assert path.parent == exports and path.is_file()
        assert reply["size"] == path.stat().st_size and reply["message_count"] == 2
    document = orjson.loads(Path(as_json["path"]).read_bytes())
    assert [m["content"] for m in document["messages"]] == [
        "Hello there, **markdown** and 東京", "General Kenobi!"]
    assert document["session"]["session_id"] == "exp/1"
    text = Path(as_md["path"]).read_text(encoding="utf-8")
    assert text.startswith("# Conversation exp/1")
    assert "## user" in text and "## assistant (echo)" in text and "General Kenobi!" in text
    assert missing["code"] == "not_found" and bad["code"] == "validation_error"


def test_turns_are_durable_across_a_restart(inprocess_factory):
    daemon = inprocess_factory()
    with daemon.client() as client:
        for n in range(5):
            append(client, "kept", "user", f"remember {n}")
    assert daemon.stop() == 0
    path = daemon.var_dir / "db" / "conversations.db"
    db = sqlite3.connect(path)
    try:
        assert db.execute("SELECT count(*) FROM messages WHERE session_id = 'kept'"
                          ).fetchone() == (5,)
    finally:
        db.close()
    daemon = inprocess_factory()
    with daemon.client() as client:
        history = data_of(client.request("conversation:history", {"session_id": "kept"}))
        found = data_of(client.request("conversation:search", {"query": "remember"}))
    assert [m["content"] for m in history["messages"]] == [f"remember {n}" for n in range(5)]
    assert found["count"] == 5


def test_bad_appends_are_validation_errors(daemon):
    with daemon.client() as client:
        for data in ({"session_id": "s", "content": "no role"},
                     {"session_id": "", "role": "user", "content": "x"},
                     {"session_id": "s", "role": "user", "content": 5},
                     {"role": "user", "content": "no session"}):
            assert error_of(client.request("conversation:append", data))["code"] == \
                "validation_error", data
        assert append(client, "s", "user", "still works")["message_id"] == 1


OLD_SCHEMA = """
CREATE TABLE messages (id INTEGER PRIMARY KEY, session_id TEXT NOT NULL, role TEXT NOT NULL,
    content TEXT NOT NULL, model TEXT, usage TEXT, request_id TEXT, metadata TEXT,
    timestamp REAL NOT NULL);
INSERT INTO messages (session_id, role, content, timestamp) VALUES ('old', 'user', 'hello', 1.0);
"""


def test_a_file_from_before_tool_messages_is_read_and_takes_them(inprocess_factory, tmp_path):
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    conn.executescript(OLD_SCHEMA)
    conn.close()
    daemon = inprocess_factory({"plugins": {"conversation": {"db_path": str(path)}}})
    call = {"id": "c1", "type": "function", "function": {"name": "state_get", "arguments": "{}"}}
    with daemon.client() as client:
        append(client, "old", "assistant", None, tool_calls=[call])
        append(client, "old", "tool", '{"value": 1}', tool_call_id="c1")
        history = data_of(client.request("conversation:history", {"session_id": "old"}))
        bad = error_of(client.request("conversation:append", {
            "session_id": "old", "role": "assistant", "content": None, "tool_calls": "no"}))
    assert [(m["role"], m["content"], m.get("tool_calls"), m.get("tool_call_id"))
            for m in history["messages"]] == [("user", "hello", None, None),
                                              ("assistant", None, [call], None),
                                              ("tool", '{"value": 1}', None, "c1")]
    assert bad["code"] == "validation_error"
