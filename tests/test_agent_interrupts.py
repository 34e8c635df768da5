"""agent:interrupt and the on_busy policies, over the daemon's real Unix socket.

A turn is held at the model by tests/fake_openai_server.py's `gated` models (the call waits until
the test opens the gate), so "a message arrives while a turn runs" is a state the test sets up,
not a race. `claude-cli/...` runs a fake `claude` script that only sleeps, to show an interrupt
kills the subprocess.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

from conftest import data_of, error_of
from doc_examples import run_doc_example
from inprocess import ThreadedDaemon
from test_agent import shared_openai, terminate_all_agents, wait_until  # noqa: F401

GATED = "gated-busy"
NOTE = "[interrupted: this turn was stopped before it was answered]"


@pytest.fixture(scope="module")
def server(shared_openai):
    return shared_openai  # this module's own fake server (a module-scoped fixture)


@pytest.fixture(scope="module")
def workdir():
    path = Path(tempfile.mkdtemp(prefix="ksi-int-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def fake_claude(workdir):
    """A `claude` that writes its pid where the test looks, then sleeps (a long turn)."""
    script = workdir / "claude"
    script.write_text(f"#!/bin/sh\necho $$ > {workdir}/claude.pid\nexec sleep 60\n")
    script.chmod(0o755)
    return script


@pytest.fixture(scope="module")
def daemon(server, workdir, fake_claude):
    config = {"plugins": {
        "agent": {"restart_base_delay_s": 0.05},
        # `slow` is the alias docs/AGENTS.md's example uses for a model that takes a while.
        "completion": {"aliases": {name: {"model": f"openai/{GATED}", "api_base": server.api_base,
                                          "api_key": "sk-test"} for name in (GATED, "slow")},
                       "retry": {"max_attempts": 1},
                       "claude_cli": {"binary": str(fake_claude), "timeout_s": 60}}}}
    (workdir / "d").mkdir()
    running = ThreadedDaemon(workdir / "d", config).start()
    yield running
    running.stop()


@pytest.fixture
def client(daemon, server):
    server.close_gate()
    with daemon.socket_client(timeout=30) as line_client:
        yield line_client
    server.open_gate()  # nothing of this test stays held at the model
    terminate_all_agents(daemon)


def spawn_held(client, server, agent_id: str, **spawn) -> None:
    """An agent whose first turn (its task) is at the model, held there."""
    before = server.count(GATED)
    data_of(client.request("agent:spawn", {"agent_id": agent_id, "model": GATED,
                                           "task": "first question", **spawn}))
    wait_until(lambda: server.count(GATED) == before + 1)


def info(client, agent_id: str) -> dict:
    return data_of(client.request("agent:info", {"agent_id": agent_id}))


def conversation(client, agent_id: str) -> list[tuple[str, str]]:
    session_id = info(client, agent_id)["session_id"]
    reply = client.request("conversation:get", {"session_id": session_id})
    return [(m["role"], m["content"]) for m in reply.get("data", {}).get("messages", [])]


def answered(client, agent_id: str, turns: int):
    return (a := info(client, agent_id))["turns"] == turns and a["pending"] == 0 and a


def test_interrupt_stops_the_turn_records_it_and_the_agent_takes_its_next_message(client,
                                                                                    server):
    spawn_held(client, server, "stopped")
    stopped = data_of(client.request("agent:interrupt", {"agent_id": "stopped"}))
    assert stopped["interrupted"] is True and stopped["request_id"].startswith("stopped:m-")
    status = data_of(client.request("completion:status", {"request_id": stopped["request_id"]}))
    assert status["status"] == "cancelled"
    # Idle now: a second interrupt says so, without an error.
    assert data_of(client.request("agent:interrupt", {"agent_id": "stopped"})) == {
        "agent_id": "stopped", "interrupted": False, "reason": "idle"}
    # The turn history and the conversation say what happened.
    recent = info(client, "stopped")["recent"]
    assert [(t["content"], t["state"]) for t in recent] == [("first question", "interrupted")]
    assert conversation(client, "stopped") == [("user", "first question"), ("assistant", NOTE)]
    # Not a crash: no restart counted, and the next message is answered, knowing the history.
    server.open_gate()
    reply = data_of(client.request("agent:send", {"agent_id": "stopped", "content": "again?",
                                                  "wait": True}))["reply"]
    assert reply["turn"] == 1
    agent = info(client, "stopped")
    assert (agent["status"], agent["restarts"], agent["turns"]) == ("running", 0, 1)
    last_call = server.calls_to(GATED)[-1]["messages"]
    assert {"role": "assistant", "content": NOTE} in last_call


def test_a_waiting_sender_of_the_interrupted_message_is_answered_not_left_hanging(daemon,
                                                                                   client, server):
    data_of(client.request("agent:spawn", {"agent_id": "waited", "model": GATED}))
    with daemon.socket_client(timeout=30) as waiter:
        waiter.send("agent:send", {"agent_id": "waited", "content": "slow one", "wait": True})
        wait_until(lambda: server.count(GATED) >= 1 and info(client, "waited")["pending"] == 1
                   and server.calls_saying("slow one") == 1)
        data_of(client.request("agent:interrupt", {"agent_id": "waited"}))
        error = error_of(waiter.recv_reply())
        assert error["code"] == "conflict" and "interrupted" in error["message"]


def test_interrupt_of_unknown_agents_is_not_found_and_the_connection_keeps_working(client):
    assert error_of(client.request("agent:interrupt", {"agent_id": "nobody"}))["code"] == \
        "not_found"
    assert error_of(client.request("agent:interrupt", {}))["code"] == "validation_error"
    assert data_of(client.request("agent:list"))["count"] == 0


def test_interrupt_kills_the_claude_subprocess(client, workdir):
    pid_file = workdir / "claude.pid"
    pid_file.unlink(missing_ok=True)
    data_of(client.request("agent:spawn", {"agent_id": "clauded", "model": "claude-cli/sonnet",
                                           "task": "think for a minute"}))
    pid = int(wait_until(lambda: pid_file.exists() and pid_file.read_text().strip()))
    assert Path(f"/proc/{pid}").exists()
    assert data_of(client.request("agent:interrupt", {"agent_id": "clauded"}))["interrupted"]
    wait_until(lambda: not Path(f"/proc/{pid}").exists())  # killed and reaped


# ---- the on_busy policies: a message arrives while the first turn is at the model ----------

def test_enqueue_is_the_default_the_second_message_waits_its_turn(client, server):
    spawn_held(client, server, "queued")
    sent = data_of(client.request("agent:send", {"agent_id": "queued", "content": "second"}))
    assert sent["delivered"] is True
    assert info(client, "queued")["pending"] == 2
    server.open_gate()
    agent = wait_until(lambda: answered(client, "queued", 2))
    assert [t["state"] for t in agent["recent"]] == ["done", "done"]


def test_reject_answers_conflict_while_a_turn_runs(client, server):
    spawn_held(client, server, "refuser", on_busy="reject")
    error = error_of(client.request("agent:send", {"agent_id": "refuser", "content": "now!"}))
    assert error["code"] == "conflict" and error["details"]["on_busy"] == "reject"
    server.open_gate()
    wait_until(lambda: answered(client, "refuser", 1))
    # Idle again: the next message is taken.
    reply = data_of(client.request("agent:send", {"agent_id": "refuser", "content": "now?",
                                                  "wait": True}))
    assert reply["reply"]["turn"] == 2


def test_interrupt_policy_stops_the_turn_and_answers_the_new_message(client, server):
    spawn_held(client, server, "switcher", on_busy="interrupt")
    data_of(client.request("agent:send", {"agent_id": "switcher", "content": "forget that"}))
    wait_until(lambda: server.calls_saying("forget that") == 1)  # the new turn is at the model
    server.open_gate()
    agent = wait_until(lambda: answered(client, "switcher", 1))
    assert [(t["content"], t["state"]) for t in agent["recent"]] == [
        ("first question", "interrupted"), ("forget that", "done")]
    roles = conversation(client, "switcher")
    assert roles[:3] == [("user", "first question"), ("assistant", NOTE),
                         ("user", "forget that")]
    assert agent["restarts"] == 0


def test_rollback_policy_forgets_the_unfinished_turn(client, server):
    spawn_held(client, server, "forgetter", on_busy="rollback")
    data_of(client.request("agent:send", {"agent_id": "forgetter", "content": "instead"}))
    wait_until(lambda: server.calls_saying("instead") == 1)
    # The new turn's model call does not see the rolled-back question.
    last_call = server.calls_to(GATED)[-1]["messages"]
    assert "first question" not in str(last_call)
    server.open_gate()
    agent = wait_until(lambda: answered(client, "forgetter", 1))
    assert [t["state"] for t in agent["recent"]] == ["rolled_back", "done"]
    stored = wait_until(lambda: len(turns := conversation(client, "forgetter")) == 2 and turns)
    assert stored == [("user", "instead"), ("assistant", agent["recent"][-1]["reply"])]


def test_a_profile_file_sets_on_busy_and_a_bad_value_is_a_validation_error(client, server,
                                                                           daemon):
    profiles = daemon.workdir / "var" / "agent_profiles"
    profiles.mkdir(parents=True, exist_ok=True)
    (profiles / "strict.yaml").write_text("on_busy: reject\n")
    listed = data_of(client.request("agent:profiles"))["profiles"]
    assert {p["name"]: p["on_busy"] for p in listed}["strict"] == "reject"
    error = error_of(client.request("agent:spawn", {"agent_id": "x", "on_busy": "shout"}))
    assert error["code"] == "validation_error"


def test_the_interrupt_example_of_agents_doc_prints_what_the_doc_shows(client, daemon, workdir):
    printed, shown = run_doc_example("AGENTS.md", "interrupt", daemon.socket_path, workdir)
    assert printed == shown
