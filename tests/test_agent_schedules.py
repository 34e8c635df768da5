"""Wake-ups (agent:schedule) over the daemon's real Unix socket: firing, waiting behind a running
turn, coalescing, surviving a restart, ending with the agent, and coded errors.

`every_s` is at least 1 s, so the tests use 1 or 2 s and few firings. A turn held at the model
(tests/fake_openai_server.py's `gated` models) shows a wake-up waiting instead of preempting.
"""
from __future__ import annotations

import shutil
import sqlite3
import tempfile
import time
from pathlib import Path

import pytest

from conftest import DaemonProcess, data_of, error_of
from doc_examples import run_doc_example
from inprocess import ThreadedDaemon
from test_agent import shared_openai, terminate_all_agents, wait_until  # noqa: F401

GATED = "gated-wake"


@pytest.fixture(scope="module")
def server(shared_openai):
    return shared_openai  # this module's own fake server (a module-scoped fixture)


@pytest.fixture(scope="module")
def daemon(server):
    workdir = Path(tempfile.mkdtemp(prefix="ksi-sched-", dir="/tmp"))
    config = {"plugins": {"completion": {
        "aliases": {GATED: {"model": f"openai/{GATED}", "api_base": server.api_base,
                            "api_key": "sk-test"}},
        "retry": {"max_attempts": 1}}}}
    running = ThreadedDaemon(workdir, config).start()
    yield running
    running.stop()
    shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def client(daemon, server):
    server.close_gate()
    with daemon.socket_client(timeout=30) as line_client:
        yield line_client
    server.open_gate()
    terminate_all_agents(daemon)


def info(client, agent_id: str) -> dict:
    return data_of(client.request("agent:info", {"agent_id": agent_id}))


def schedules(client, agent_id: str | None = None) -> list[dict]:
    data = {"agent_id": agent_id} if agent_id else {}
    return data_of(client.request("agent:schedules", data))["schedules"]


def next_reply(client, timeout: float = 20.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        client.settimeout(max(0.01, deadline - time.monotonic()))
        message = client.recv()
        if message["type"] == "event" and message["event"] == "agent:reply":
            return message["data"]


def test_a_schedule_fires_into_the_inbox_and_the_agent_answers(client):
    assert data_of(client.request("system:subscribe", {"patterns": ["agent:reply"]}))
    data_of(client.request("agent:spawn", {"agent_id": "sleeper"}))
    made = data_of(client.request("agent:schedule", {"agent_id": "sleeper", "every_s": 1,
                                                     "prompt": "time to check the news"}))
    assert made["schedule_id"].startswith("s-") and made["next_at"] > made["created_at"]
    reply = next_reply(client)
    assert (reply["agent_id"], reply["sender"]) == ("sleeper", f"schedule:{made['schedule_id']}")
    assert "time to check the news" in reply["text"]
    listed = schedules(client, "sleeper")
    assert [s["schedule_id"] for s in listed] == [made["schedule_id"]]
    assert listed[0]["fired"] >= 1 and listed[0]["next_at"] >= made["next_at"] + 1
    assert data_of(client.request("agent:unschedule", {"schedule_id": made["schedule_id"]}))[
        "status"] == "unscheduled"
    assert schedules(client) == []


def test_a_wake_up_during_a_turn_waits_for_it_and_later_firings_are_coalesced(client, server):
    data_of(client.request("agent:spawn", {"agent_id": "busy", "model": GATED,
                                           "task": "a long job"}))
    wait_until(lambda: server.count(GATED) == 1)
    made = data_of(client.request("agent:schedule", {"agent_id": "busy", "every_s": 1,
                                                     "prompt": "wake up"}))
    # Two firings: the first waits in the inbox, the second is folded into it.
    wait_until(lambda: schedules(client, "busy")[0]["coalesced"] >= 1, timeout=10)
    data_of(client.request("agent:unschedule", {"schedule_id": made["schedule_id"]}))
    listed = info(client, "busy")
    assert listed["pending"] == 2  # the task being answered, and one wake-up
    assert server.count(GATED) == 1  # the running turn was not preempted
    server.open_gate()
    done = wait_until(lambda: (a := info(client, "busy"))["turns"] == 2 and a["pending"] == 0
                      and a)
    assert [(t["content"], t["sender"], t["state"]) for t in done["recent"]] == [
        ("a long job", None, "done"), ("wake up", f"schedule:{made['schedule_id']}", "done")]


def test_schedules_end_with_their_agent(client, daemon):
    for agent_id in ("ending", "short"):
        data_of(client.request("agent:spawn", {"agent_id": agent_id, "max_turns": 1}))
    for agent_id, every_s in (("ending", 60), ("short", 1)):
        data_of(client.request("agent:schedule", {"agent_id": agent_id, "every_s": every_s,
                                                  "prompt": "ping"}))
    data_of(client.request("agent:terminate", {"agent_id": "ending"}))
    assert error_of(client.request("agent:schedules", {"agent_id": "ending"}))["code"] == \
        "conflict"
    # `short` answers one firing, its last turn: its schedule ends there.
    wait_until(lambda: info(client, "short")["turns"] == 1)
    wait_until(lambda: schedules(client) == [])
    with sqlite3.connect(daemon.var_dir / "plugins" / "agent" / "agents.db") as db:
        assert db.execute("SELECT count(*) FROM agent_schedules").fetchone()[0] == 0


@pytest.mark.parametrize("data, code", [
    ({"agent_id": "picky", "cron": "every minute", "prompt": "x"}, "validation_error"),
    ({"agent_id": "picky", "cron": "61 * * * *", "prompt": "x"}, "validation_error"),
    ({"agent_id": "picky", "cron": "0 0 31 2 *", "prompt": "x"}, "validation_error"),  # never
    ({"agent_id": "picky", "cron": "* * * * * *", "prompt": "x"}, "validation_error"),
    ({"agent_id": "picky", "every_s": 0.5, "prompt": "x"}, "validation_error"),
    ({"agent_id": "picky", "every_s": 10 ** 9, "prompt": "x"}, "validation_error"),
    ({"agent_id": "picky", "every_s": 5, "cron": "* * * * *", "prompt": "x"}, "validation_error"),
    ({"agent_id": "picky", "prompt": "x"}, "validation_error"),
    ({"agent_id": "picky", "every_s": 5, "prompt": ""}, "validation_error"),
    ({"agent_id": "nobody", "every_s": 5, "prompt": "x"}, "not_found"),
])
def test_bad_schedules_are_coded_errors_and_the_connection_keeps_working(client, data, code):
    data_of(client.request("agent:spawn", {"agent_id": "picky"}))
    assert error_of(client.request("agent:schedule", data))["code"] == code
    assert error_of(client.request("agent:unschedule", {"schedule_id": "s-none"}))["code"] == \
        "not_found"
    assert schedules(client) == []


def test_a_cron_schedule_fires_at_the_next_matching_minute_in_utc(client):
    data_of(client.request("agent:spawn", {"agent_id": "cronned"}))
    made = data_of(client.request("agent:schedule", {"agent_id": "cronned",
                                                     "cron": "*/5 * * * *", "prompt": "x"}))
    assert made["next_at"] % 300 == 0 and 0 < made["next_at"] - time.time() <= 300


def test_a_schedule_survives_a_restart_and_missed_firings_fire_once(tmp_path):
    daemon = DaemonProcess(tmp_path, {}).start()
    try:
        with daemon.client(timeout=30) as client:
            data_of(client.request("agent:spawn", {"agent_id": "durable"}))
            made = data_of(client.request("agent:schedule", {"agent_id": "durable",
                                                             "every_s": 1, "prompt": "tick"}))
            wait_until(lambda: info(client, "durable")["turns"] >= 1)
            before = schedules(client)[0]
            turns_before = info(client, "durable")["turns"]
        assert daemon.stop() == 0
        # Two firings or more are due while the daemon is down: the next was due at most 1 s
        # after the stop, and the restart comes at least 3.5 s after it.
        time.sleep(3.5)
        restarted_at = time.time()
        daemon.start()
        with daemon.client(timeout=30) as client:
            after = wait_until(lambda: (s := schedules(client)) and
                               s[0]["fired"] > before["fired"] and s[0])
            assert after["schedule_id"] == made["schedule_id"]
            assert after["coalesced"] >= before["coalesced"] + 2  # the misses, folded
            wait_until(lambda: info(client, "durable")["turns"] > turns_before)  # answered
    finally:
        assert daemon.stop() == 0
    with sqlite3.connect(tmp_path / "var" / "plugins" / "agent" / "agents.db") as db:
        fired_at = [row[0] for row in db.execute(
            "SELECT received_at FROM agent_messages WHERE sender = ? AND received_at > ? "
            "ORDER BY seq", (f"schedule:{made['schedule_id']}", restarted_at))]
    # One firing at start for the misses, then one per second: never a burst. (Each gap is a
    # second counted from the firing before, less how much later that firing's message was
    # stored than the next one's: a loaded machine shortens a gap by a fraction, a burst of
    # coalesced misses would make it zero.)
    assert fired_at and all(b - a > 0.5 for a, b in zip(fired_at, fired_at[1:])), fired_at


def test_the_schedule_example_of_agents_doc_prints_what_the_doc_shows(client, daemon, tmp_path):
    printed, shown = run_doc_example("AGENTS.md", "schedule", daemon.socket_path, tmp_path)
    assert printed == shown
