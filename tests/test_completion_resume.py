"""Completion requests survive the daemon: the journal, resume after kill -9 and SIGTERM,
repeated request ids, and a shutdown that nothing can hang.

Real daemon processes over their socket; the model is tests/fake_openai_server.py, whose
`gated` model holds every call until the test opens the gate, so a test knows which requests
were still pending when the daemon died, and counts the calls each request made.
"""
from __future__ import annotations

import signal
import sqlite3
import time

import orjson
import pytest

from conftest import data_of, error_of
from fake_openai_server import FakeOpenAIServer

TERMINAL = ("completion:result", "completion:error", "completion:cancelled")


@pytest.fixture
def fake_openai():
    with FakeOpenAIServer() as server:
        yield server


def config_for(api_base: str, shutdown_timeout: float = 10, **completion) -> dict:
    aliases = {name: {"model": f"openai/{name}", "api_base": api_base, "api_key": "sk-test"}
               for name in ("echo", "gated", "broken-a")}
    return {"daemon": {"shutdown_timeout": shutdown_timeout},
            "plugins": {"completion": {"aliases": aliases,
                                       "retry": {"max_attempts": 2, "base_delay_s": 0.05},
                                       **completion}}}


def journal_column(daemon, column: str = "state") -> list:
    """One column of every journal entry, oldest first, read from the file itself."""
    path = daemon.var_dir / "plugins" / "completion" / "journal.db"
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return [row[0] for row in conn.execute(f"SELECT {column} FROM requests ORDER BY rowid")]
    finally:
        conn.close()


def wait_until(condition, timeout: float = 120.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def send_async(client, data: dict, cid: str) -> dict:
    client.send("completion:async", data, correlation_id=cid)
    while True:
        message = client.recv()
        if message["type"] == "reply" and message["correlation_id"] == cid:
            return data_of(message)


def turns_of(daemon, session_id: str) -> list[dict]:
    reply = daemon.request("conversation:get", {"session_id": session_id})
    return reply["data"]["messages"] if "data" in reply else []


def prompt(i: int) -> str:
    return f"question number {i}"


def test_kill_9_with_ten_pending_completions_runs_each_once_after_restart(daemon_factory,
                                                                          fake_openai):
    config = config_for(fake_openai.api_base, max_concurrent=3)
    first = daemon_factory(config=config, subdir="d")
    with first.client(timeout=120) as client:
        for i in range(10):
            reply = send_async(client, {"prompt": prompt(i), "model": "gated",
                                        "request_id": f"kill-{i}", "session_id": f"s-{i}"},
                               f"c-{i}")
            assert reply["status"] in ("queued", "processing")
        wait_until(lambda: fake_openai.count("gated") == 3, what="three calls in flight")
        first.proc.kill()
        first.wait()
    assert journal_column(first) == ["pending"] * 10
    called_before = {i: fake_openai.calls_saying(prompt(i)) for i in range(10)}
    assert sum(called_before.values()) == 3

    second = daemon_factory(config=config, subdir="d")
    watcher = second.client(timeout=120)
    data_of(watcher.request("system:subscribe", {"patterns": ["completion:*"]}))
    fake_openai.open_gate()
    with second.client(timeout=120) as client:
        for i in range(10):
            # What a restored agent does: ask again with the same request_id.
            result = data_of(client.request("completion:request", {
                "prompt": prompt(i), "model": "gated", "request_id": f"kill-{i}",
                "session_id": f"s-{i}"}))
            assert result["text"] == f"turn 1: you said '{prompt(i)}'"
            assert result["resumed"] is True and result["deduplicated"] is True
            status = data_of(client.request("completion:status", {"request_id": f"kill-{i}"}))
            assert status["status"] == "completed" and status["resumed"] is True
    results: dict[str, int] = {}
    while sum(results.values()) < 10:
        message = watcher.recv()
        if message["event"] == "completion:result":
            assert message["data"]["resumed"] is True
            results[message["data"]["request_id"]] = results.get(
                message["data"]["request_id"], 0) + 1
    assert results == {f"kill-{i}": 1 for i in range(10)}
    watcher.close()
    for i in range(10):
        # One call after the restart each; a call cut off by the kill is the only earlier one.
        assert fake_openai.calls_saying(prompt(i)) - called_before[i] == 1
        wait_until(lambda: len(turns_of(second, f"s-{i}")) >= 2, what=f"s-{i} stored")
        turns = turns_of(second, f"s-{i}")
        assert [(t["role"], t["request_id"]) for t in turns] == \
            [("user", f"kill-{i}"), ("assistant", f"kill-{i}")]
    figures = data_of(second.request("completion:status"))
    assert (figures["completed"], figures["resumed"], figures["queued"]) == (10, 10, 0)
    assert second.stop() == 0
    assert journal_column(second) == ["completed"] * 10


def test_sigterm_checkpoints_what_cannot_finish_and_exits_0(daemon_factory, fake_openai):
    config = config_for(fake_openai.api_base, shutdown_timeout=1, max_concurrent=2)
    first = daemon_factory(config=config, subdir="d")
    waiting = first.client(timeout=120)
    waiting.send("completion:request", {"prompt": prompt(0), "model": "gated",
                                        "request_id": "term-0"}, correlation_id="w")
    assert waiting.recv()["data"] == {"request_id": "term-0", "status": "queued"}
    with first.client(timeout=120) as client:
        for i in (1, 2):
            send_async(client, {"prompt": prompt(i), "model": "gated",
                                "request_id": f"term-{i}"}, f"a-{i}")
        wait_until(lambda: fake_openai.count("gated") == 2, what="two calls in flight")
        status = data_of(client.request("completion:status", {"request_id": "term-2"}))
        assert status["status"] == "queued"  # term-0 and term-1 hold both slots
        first.proc.send_signal(signal.SIGTERM)
        told = set()
        while len(told) < 2:
            message = client.recv()
            assert message["event"] not in TERMINAL, message
            if message["data"].get("status") == "checkpointed":
                told.add(message["data"]["request_id"])
        assert told == {"term-1", "term-2"}
    error = error_of(waiting.recv_reply())
    assert error["code"] == "unavailable"
    assert error["details"] == {"request_id": "term-0", "checkpointed": True}
    waiting.close()
    assert first.wait(30) == 0
    assert journal_column(first) == ["pending"] * 3

    second = daemon_factory(config=config, subdir="d")
    fake_openai.open_gate()
    with second.client(timeout=120) as client:
        for i in range(3):
            result = data_of(client.request("completion:request", {
                "prompt": prompt(i), "model": "gated", "request_id": f"term-{i}"}))
            assert result["text"] == f"turn 1: you said '{prompt(i)}'"
            assert result["resumed"] is True
    # The two cut off by the deadline called the model again; the queued one only once.
    assert [fake_openai.calls_saying(prompt(i)) for i in range(3)] == [2, 2, 1]
    assert second.stop() == 0
    assert journal_column(second) == ["completed"] * 3


@pytest.mark.daemon("inprocess")
def test_a_repeated_request_id_is_answered_from_its_job_not_run_again(daemon_factory,
                                                                       fake_openai):
    config = config_for(fake_openai.api_base)
    first = daemon_factory(config=config, subdir="d")
    with first.client(timeout=120) as client, first.client(timeout=120) as other:
        # While it runs: the repeat waits for the same job.
        started = send_async(client, {"prompt": "while running", "model": "gated",
                                      "request_id": "r-1"}, "a-1")
        repeat = send_async(other, {"prompt": "while running", "model": "gated",
                                    "request_id": "r-1"}, "a-2")
        assert repeat["deduplicated"] is True and repeat["session_id"] == started["session_id"]
        other.send("completion:request", {"prompt": "while running", "model": "gated",
                                          "request_id": "r-1"}, correlation_id="wait")
        fake_openai.open_gate()
        waited = data_of(other.recv_reply())
        assert waited["deduplicated"] is True and waited["text"] == \
            "turn 1: you said 'while running'"
        # After it finished: the same result, no second call.
        first_result = data_of(client.request("completion:request", {
            "prompt": "once", "model": "echo", "request_id": "r-2"}))
        again = data_of(client.request("completion:request", {
            "prompt": "once", "model": "echo", "request_id": "r-2"}))
        assert again["deduplicated"] is True and first_result["deduplicated"] is False
        assert {k: v for k, v in again.items() if k != "deduplicated"} == \
            {k: v for k, v in first_result.items() if k != "deduplicated"}
        status = data_of(client.request("completion:async", {
            "prompt": "once", "model": "echo", "request_id": "r-2"}))
        assert status == {"request_id": "r-2", "status": "completed",
                          "session_id": first_result["session_id"], "deduplicated": True,
                          "resumed": False}
        # A failure is remembered too, with its code.
        failed = error_of(client.request("completion:request", {
            "prompt": "fails", "model": "broken-a", "request_id": "r-3"}))
        repeated_failure = error_of(client.request("completion:request", {
            "prompt": "fails", "model": "broken-a", "request_id": "r-3"}))
        assert failed["code"] == repeated_failure["code"] == "unavailable"
        assert repeated_failure["details"]["deduplicated"] is True
    assert fake_openai.calls_saying("while running") == 1
    assert fake_openai.calls_saying("once") == 1
    assert fake_openai.calls_saying("fails") == 2  # its own two attempts, nothing more
    assert first.stop() == 0

    # Remembered across a restart: answered from the journal, still without a call.
    second = daemon_factory(config=config, subdir="d")
    with second.client(timeout=120) as client:
        again = data_of(client.request("completion:request", {
            "prompt": "once", "model": "echo", "request_id": "r-2"}))
        assert again["text"] == first_result["text"] and again["deduplicated"] is True
        assert error_of(client.request("completion:request", {
            "prompt": "fails", "model": "broken-a", "request_id": "r-3"}))["code"] == \
            "unavailable"
    assert fake_openai.calls_saying("once") == 1
    assert fake_openai.calls_saying("fails") == 2


@pytest.mark.daemon("inprocess")
def test_finished_requests_are_forgotten_beyond_the_kept_count(daemon_factory, fake_openai):
    config = config_for(fake_openai.api_base, journal={"keep_finished": 2})
    daemon = daemon_factory(config=config)
    with daemon.client(timeout=120) as client:
        for i in range(3):
            data_of(client.request("completion:request", {
                "prompt": f"kept {i}", "model": "echo", "request_id": f"k-{i}"}))
        assert error_of(client.request("completion:status", {"request_id": "k-0"}))["code"] \
            == "not_found"
        assert data_of(client.request("completion:status", {"request_id": "k-2"}))[
            "status"] == "completed"
        # Forgotten means a new request: it runs again.
        rerun = data_of(client.request("completion:request", {
            "prompt": "kept 0", "model": "echo", "request_id": "k-0"}))
        assert rerun["deduplicated"] is False
    assert fake_openai.calls_saying("kept 0") == 2


STUBBORN_PLUGIN = '''
import asyncio
import os

from ksi_daemon.plugin_base import hookimpl

MARK = os.path.join(os.path.dirname(__file__), "was-stubborn")


@hookimpl
async def ksi_completion_pre_call(context):
    # The first time only: a call that swallows every cancellation.
    if os.path.exists(MARK):
        return
    open(MARK, "w").close()
    while True:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            pass
'''


def test_a_call_that_ignores_cancellation_does_not_keep_the_daemon_alive(daemon_factory,
                                                                          workdir):
    plugins = workdir / "plugins"
    plugins.mkdir()
    (plugins / "stubborn.py").write_text(STUBBORN_PLUGIN)
    config = {"daemon": {"plugin_dirs": [str(plugins)], "shutdown_timeout": 30}}
    first = daemon_factory(config=config, subdir="d")
    waiting = first.client(timeout=120)
    waiting.send("completion:request", {"prompt": "are you there", "request_id": "st-1"},
                 correlation_id="w")
    wait_until(lambda: (plugins / "was-stubborn").exists(), what="the stubborn call")
    assert data_of(first.request("system:shutdown", {"timeout_s": 0.5})) == \
        {"status": "shutting_down"}
    assert error_of(waiting.recv_reply())["details"]["checkpointed"] is True
    waiting.close()
    assert first.wait(30) == 0
    assert "exiting_past_stuck_tasks" in first.read_output()

    second = daemon_factory(config=config, subdir="d")
    with second.client(timeout=120) as client:
        result = data_of(client.request("completion:request", {
            "prompt": "are you there", "request_id": "st-1"}))
    assert result["resumed"] is True and result["text"]
    assert second.stop() == 0


@pytest.mark.daemon("inprocess")
def test_errors_a_user_can_cause_are_coded_and_leave_the_connection_working(daemon):
    with daemon.client(timeout=120) as client:
        assert error_of(client.request("completion:status", {"request_id": "nobody"}))[
            "code"] == "not_found"
        assert data_of(client.request("completion:cancel", {"request_id": "nobody"}))[
            "status"] == "not_found"
        assert error_of(client.request("completion:request", {
            "prompt": "x", "request_id": "r" * 129}))["code"] == "validation_error"
        assert error_of(client.request("completion:async", {"request_id": "no-prompt"}))[
            "code"] == "validation_error"
        assert error_of(client.request("completion:request", {
            "prompt": "x", "model": "no/such-model-anywhere"}))["code"] == "not_found"
        assert error_of(client.request("completion:status", {"request_id": "no-prompt"}))[
            "code"] == "not_found"  # a refused request is not remembered
        result = data_of(client.request("completion:request", {"prompt": "still here"}))
        assert result["text"] and result["resumed"] is False


def as_if_stopped_before_storing_turns(daemon, *forget_in_store: str) -> None:
    """The stopped daemon's journal says no result's turns were stored, and its conversation
    store loses what the `forget_in_store` statements delete."""
    journal = sqlite3.connect(daemon.var_dir / "plugins" / "completion" / "journal.db")
    with journal:
        journal.execute("UPDATE requests SET turns_stored = 0")
    journal.close()
    store = sqlite3.connect(daemon.var_dir / "db" / "conversations.db")
    with store:
        for statement in forget_in_store:
            store.execute(statement)
        store.execute("INSERT INTO messages_fts (messages_fts) VALUES ('rebuild')")
    store.close()


AGENT_MOVED_PLUGIN = '''
from pathlib import Path

from ksi_daemon.plugin_base import hookimpl


@hookimpl
def ksi_completion_agent_here(agent_id):
    if agent_id != "moved-away":
        return None
    return Path(__file__).with_name("came-back").exists()
'''


@pytest.mark.daemon("inprocess")
def test_an_unstored_result_of_an_agent_that_moved_is_left_to_its_new_home(daemon_factory,
                                                                           workdir):
    """Cluster mode's case, with the agent plugin's answer played by a small plugin: the
    agent's new home asks for the turn again and stores it, so this daemon must not."""
    first = daemon_factory(subdir="d")
    with first.client(timeout=120) as client:
        for name, agent in (("ours", None), ("theirs", "moved-away")):
            data_of(client.request("completion:request", {
                "prompt": f"remember {name}", "session_id": name, "request_id": f"t-{name}",
                **({"agent_id": agent} if agent else {})}))
    for name in ("ours", "theirs"):
        wait_until(lambda: len(turns_of(first, name)) == 2, what=f"{name} stored")
    assert first.stop() == 0
    # As if the daemon died between committing both results and storing their turns.
    as_if_stopped_before_storing_turns(first, "DELETE FROM messages", "DELETE FROM sessions")

    plugins = workdir / "agent-moved"
    plugins.mkdir()
    (plugins / "agent_moved.py").write_text(AGENT_MOVED_PLUGIN)
    second = daemon_factory(subdir="d", config={"daemon": {"plugin_dirs": [str(plugins)]}})
    wait_until(lambda: len(turns_of(second, "ours")) == 2, what="this daemon's turns stored")
    wait_until(lambda: journal_column(second, "turns_stored") == [1, 0],
               what="the journal to know this daemon's are done")
    assert turns_of(second, "theirs") == []  # the agent's home stores that turn
    # Unless the agent comes back here and asks for it again: then this daemon stores it.
    (plugins / "came-back").touch()
    again = data_of(second.request("completion:request", {
        "prompt": "remember theirs", "session_id": "theirs", "request_id": "t-theirs",
        "agent_id": "moved-away"}))
    assert again["deduplicated"] is True
    wait_until(lambda: len(turns_of(second, "theirs")) == 2, what="the turns stored at last")
    assert [t["request_id"] for t in turns_of(second, "theirs")] == ["t-theirs", "t-theirs"]
    wait_until(lambda: journal_column(second, "turns_stored") == [1, 1],
               what="the journal to know both are done")
    assert second.stop() == 0


@pytest.mark.daemon("inprocess")
def test_a_result_whose_turns_were_not_stored_gets_them_once_at_the_next_start(daemon_factory):
    first = daemon_factory(subdir="d")
    texts = {}
    with first.client(timeout=120) as client:
        for name in ("kept", "lost", "half"):
            texts[name] = data_of(client.request("completion:request", {
                "prompt": f"remember the {name} one", "session_id": name,
                "request_id": f"t-{name}"}))["text"]
    for name in ("kept", "lost", "half"):
        wait_until(lambda: len(turns_of(first, name)) == 2, what=f"{name} stored")
    assert first.stop() == 0
    # As if the daemon died between committing the results and storing their turns: the journal
    # says "not stored" for all, the store lost both turns of one and the answer of another.
    as_if_stopped_before_storing_turns(
        first, "DELETE FROM messages WHERE session_id = 'lost'",
        "DELETE FROM sessions WHERE session_id = 'lost'",
        "DELETE FROM messages WHERE session_id = 'half' AND role = 'assistant'")

    second = daemon_factory(subdir="d")
    for name in ("lost", "half"):
        wait_until(lambda: len(turns_of(second, name)) >= 2, what=f"the {name} turns stored")
    for name in ("kept", "lost", "half"):
        turns = turns_of(second, name)
        assert [(t["role"], t["request_id"]) for t in turns] == \
            [("user", f"t-{name}"), ("assistant", f"t-{name}")]
        assert turns[0]["content"] == f"remember the {name} one"
        assert turns[1]["content"] == texts[name]
    wait_until(lambda: journal_column(second, "turns_stored") == [1, 1, 1],
               what="the journal to know it")
    assert second.stop() == 0



@pytest.mark.daemon("inprocess")
def test_a_session_continued_after_a_restart_keeps_its_response_log(daemon_factory, fake_openai):
    # A new session's log file is a spare file made ahead and moved into place: it must never
    # take the place of a file that exists already.
    config = config_for(fake_openai.api_base)
    first = daemon_factory(config=config, subdir="d")
    with first.client(timeout=120) as client:
        for turn in ("first", "second"):
            data_of(client.request("completion:request", {
                "prompt": f"{turn} turn", "model": "echo", "session_id": "kept-log"}))
        data_of(client.request("completion:request", {"prompt": "another", "model": "echo"}))
    assert first.stop() == 0
    responses = first.var_dir / "logs" / "responses"
    assert list((responses / ".spare").iterdir()) == []  # a clean stop leaves no spare behind

    second = daemon_factory(config=config, subdir="d")
    with second.client(timeout=120) as client:
        for session_id in ("new-one", "kept-log"):  # the new one has spares made meanwhile
            data_of(client.request("completion:request", {
                "prompt": "third turn", "model": "echo", "session_id": session_id}))
    logged = [orjson.loads(line) for line in (responses / "kept-log.jsonl").read_bytes()
              .splitlines()]
    assert [entry["text"].split(": ", 1)[1].split(" after")[0] for entry in logged] == \
        ["you said 'first turn'", "you said 'second turn'", "you said 'third turn'"]
    assert second.stop() == 0


@pytest.mark.daemon("inprocess")
def test_a_journal_that_cannot_take_a_request_answers_unavailable(daemon_factory, fake_openai):
    daemon = daemon_factory(config=config_for(fake_openai.api_base))
    with daemon.client(timeout=120) as client:
        data_of(client.request("completion:request", {"prompt": "first", "model": "echo"}))
        # Another process holds the journal's write lock, as a stuck tool would.
        other = sqlite3.connect(daemon.var_dir / "plugins" / "completion" / "journal.db",
                                isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        try:
            for event in ("completion:request", "completion:async"):
                error = error_of(client.request(event, {
                    "prompt": "not now", "model": "echo", "request_id": f"locked-{event}"}))
                assert error["code"] == "unavailable", error
                assert "journal" in error["message"]
                # Refused means not remembered: the id is free for a later try.
                assert error_of(client.request("completion:status", {
                    "request_id": f"locked-{event}"}))["code"] == "not_found"
        finally:
            other.execute("ROLLBACK")
            other.close()
        result = data_of(client.request("completion:request", {
            "prompt": "again", "model": "echo", "request_id": "locked-completion:request"}))
        assert result["text"] == "turn 1: you said 'again'" and result["deduplicated"] is False
    assert fake_openai.calls_saying("not now") == 0
