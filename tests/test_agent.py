"""Agents through the real daemon: conversations, crashes, restarts, leaks.

Models are the built-in offline model or tests/fake_openai_server.py (loopback), whose `echo`
replies are a pure function of the messages it was sent, so a test can tell from the server's
request log exactly what each agent's model was given and what it answered.

Tests share one daemon and one fake server, since every daemon start costs seconds: each test
uses agent ids and model names no other test uses, its agents are terminated after it, so it
starts from a daemon with no agents; a test of what survives a restart restarts that daemon and
goes on with it. The agents' logic runs on a daemon in this process (`shared`, tests/inprocess.py:
litellm is imported once, and a graceful restart costs no process start); what only a process
shows (its exit code on SIGTERM, kill -9, what it prints) runs on a daemon process
(`shared_process`).
"""
from __future__ import annotations

import shutil
import signal
import tempfile
import time
from pathlib import Path

import pytest

from conftest import DaemonProcess, data_of, error_of
from inprocess import ThreadedDaemon
from fake_openai_server import FakeOpenAIServer, echo_text

TOPIC = "Is P equal to NP?"
MODELS = ("echo-pro", "echo-con", "held-pro", "held-con", "held-pro-k", "held-con-k",
          "held-long", "broken-a", "hang-a", "hang-b", "gated-a")


@pytest.fixture(scope="module")
def shared_openai():
    with FakeOpenAIServer() as server:
        yield server


def shared_config(api_base: str) -> dict:
    return {**config_for(api_base, max_restarts=2), "daemon": {"shutdown_timeout": 3}}


@pytest.fixture(scope="module")
def shared_daemon(shared_openai):
    workdir = Path(tempfile.mkdtemp(prefix="ksi-", dir="/tmp"))
    daemon = ThreadedDaemon(workdir, shared_config(shared_openai.api_base)).start()
    yield daemon
    daemon.stop()
    shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="module")
def shared_process_daemon(shared_openai):
    workdir = Path(tempfile.mkdtemp(prefix="ksi-", dir="/tmp"))
    daemon = DaemonProcess(workdir, shared_config(shared_openai.api_base)).start()
    yield daemon
    exit_code = daemon.stop()
    shutil.rmtree(workdir, ignore_errors=True)
    assert exit_code == 0


def terminate_all_agents(daemon) -> None:
    with daemon.client(timeout=60) as client:
        for agent in data_of(client.request("agent:list"))["agents"]:
            data_of(client.request("agent:terminate", {"agent_id": agent["agent_id"]}))


@pytest.fixture
def shared(shared_daemon):
    """The shared in-process daemon, left with no agents by the test."""
    if shared_daemon.loop is None or shared_daemon.loop.is_closed():  # stopped by a failure
        shared_daemon.start()
    yield shared_daemon
    terminate_all_agents(shared_daemon)


@pytest.fixture
def shared_process(shared_process_daemon):
    """The shared daemon process, left with no agents by the test."""
    if shared_process_daemon.proc.poll() is not None:  # an earlier test stopped it and failed
        shared_process_daemon.start()
    yield shared_process_daemon
    terminate_all_agents(shared_process_daemon)


def restart(daemon, kill: bool = False, held=None) -> None:
    """Stop the daemon (SIGTERM, which must exit 0, or kill -9: a process) and start it again.

    `held` (a call the fake server holds, under way at the daemon) is released once the daemon
    is stopping (SIGTERM: it finishes during the shutdown) or gone (kill -9)."""
    if kill:
        daemon.proc.kill()
        daemon.proc.wait()
        daemon.output.close()
        if held is not None:
            held.release()
    elif held is not None:
        stopping = daemon.read_output().count("daemon_stopping")
        daemon.proc.send_signal(signal.SIGTERM)
        wait_until(lambda: daemon.read_output().count("daemon_stopping") > stopping)
        held.release()
        assert daemon.wait() == 0
        daemon.output.close()
    else:
        assert daemon.stop() == 0
    daemon.start()


def config_for(api_base: str | None = None, **agent_settings) -> dict:
    plugins = {"agent": {"restart_base_delay_s": 0.05, **agent_settings}}
    if api_base is not None:
        plugins["completion"] = {
            "aliases": {name: {"model": f"openai/{name}", "api_base": api_base,
                               "api_key": "sk-test"} for name in MODELS},
            "retry": {"max_attempts": 1, "base_delay_s": 0.05}}
    return {"plugins": plugins}


def next_event(client, event: str, timeout: float = 30.0, **expected) -> dict:
    """The data of the next push named `event` whose fields include `expected`."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        assert left > 0, f"no {event} {expected} within {timeout} s"
        client.settimeout(left)
        message = client.recv()
        if message["type"] == "event" and message["event"] == event and \
                all(message["data"].get(k) == v for k, v in expected.items()):
            return message


def replies(watcher, count: int, timeout: float = 60.0) -> list[dict]:
    return [next_event(watcher, "agent:reply", timeout)["data"] for _ in range(count)]


def watch(daemon, patterns=("agent:*",)):
    watcher = daemon.client(timeout=30)
    assert data_of(watcher.request("system:subscribe", {"patterns": list(patterns)}))
    return watcher


def info(client, agent_id: str) -> dict:
    return data_of(client.request("agent:info", {"agent_id": agent_id}))


def wait_until(check, timeout: float = 30.0, every: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(every)


def stored_turns(client, session_id: str, answers: int) -> list[dict]:
    """The session's messages once it holds `answers` answers: the completion plugin stores a
    turn right after answering it, so a reader may be a moment early."""
    def stored():
        messages = data_of(client.request("conversation:get",
                                          {"session_id": session_id}))["messages"]
        return sum(m["role"] == "assistant" for m in messages) >= answers and messages
    return wait_until(stored)


def start_debate(client, turns: int, pro_model: str | None = None,
                 con_model: str | None = None) -> None:
    """Two debaters; the first message reaches pro as if con had said it, so they take turns."""
    for agent_id, model in (("pro", pro_model), ("con", con_model)):
        spawn = {"profile": "debater", "agent_id": agent_id, "max_turns": turns}
        if model:
            spawn["model"] = model
        assert data_of(client.request("agent:spawn", spawn))["status"] == "running"
    sent = data_of(client.request("agent:send", {"agent_id": "pro", "content": TOPIC,
                                                 "sender": "con"}))
    assert sent["delivered"] is True


def both_finished(client, turns: int):
    """Both debaters gave `turns` replies, and nothing is left in their inboxes."""
    agents = [info(client, agent_id) for agent_id in ("pro", "con")]
    return all(a["turns"] == turns and a["pending"] == 0 for a in agents) and agents


def assert_turns_alternate(seen: list[dict], turns: int) -> None:
    assert [r["agent_id"] for r in seen] == ["pro", "con"] * turns
    assert [r["turn"] for r in seen] == [n for n in range(1, turns + 1) for _ in (0, 1)]
    assert [r["sender"] for r in seen] == ["con", "pro"] * turns
    assert all(r["request_id"] == f"{r['agent_id']}:{r['in_reply_to']}" for r in seen)


def assert_chain(calls: list[dict], prompt_of: dict[str, str]) -> None:
    """Server calls alternate pro/con, each answering the text the previous call produced."""
    assert [c["model"].split("-")[1] for c in calls] == \
        ["pro", "con"] * (len(calls) // 2)
    assert calls[0]["messages"][-1] == {"role": "user", "content": TOPIC}
    for before, after in zip(calls, calls[1:]):
        assert after["messages"][-1] == {"role": "user", "content": echo_text(before["messages"])}
    for call in calls:
        speaker = call["model"].split("-")[1]
        assert {"role": "system", "content": prompt_of[speaker]} in call["messages"]


# ---- conversations ------------------------------------------------------------------------------

def test_a_four_round_debate_with_the_offline_model_ends_by_itself(shared):
    with watch(shared) as watcher, shared.client(timeout=30) as client:
        start_debate(client, turns=4)
        seen = replies(watcher, 8)
        assert_turns_alternate(seen, 4)
        done = wait_until(lambda: both_finished(client, 4))
        # Con's fourth reply reached pro after pro's last turn: kept, not answered.
        pro = info(client, "pro")
        wait_until(lambda: info(client, "pro")["messages_handled"] == 5)
        assert info(client, "pro")["recent"][-1]["state"] == "skipped"
        assert info(client, "con")["messages_handled"] == 4
        # What each model was given: its session holds the other's replies as the user turns.
        for agent, other in (("pro", "con"), ("con", "pro")):
            session = next(a for a in done if a["agent_id"] == agent)["session_id"]
            stored = stored_turns(client, session, 4)
            said = [m["content"] for m in stored if m["role"] == "user"]
            answered = [m["content"] for m in stored if m["role"] == "assistant"]
            theirs = [r["text"] for r in seen if r["agent_id"] == other]
            assert said == ([TOPIC] + theirs[:3] if agent == "pro" else theirs)
            assert answered == [r["text"] for r in seen if r["agent_id"] == agent]
        # The offline model answers what it was told: the system prompt and the last message.
        assert all(r["text"].startswith("(Answering as instructed: You are a debater")
                   for r in seen)
        assert f'You said: "{TOPIC}"' in seen[0]["text"]
        assert pro["turns"] == 4 and pro["max_turns"] == 4


def test_a_four_round_debate_with_the_openai_compatible_server(shared, shared_openai):
    with watch(shared) as watcher, shared.client(timeout=30) as client:
        start_debate(client, turns=4, pro_model="echo-pro", con_model="echo-con")
        seen = replies(watcher, 8)
        assert_turns_alternate(seen, 4)
        wait_until(lambda: both_finished(client, 4))
        wait_until(lambda: info(client, "pro")["messages_handled"] == 5)
        prompts = {a: info(client, a)["system_prompt"] for a in ("pro", "con")}
    calls = shared_openai.calls_to("echo-pro") + shared_openai.calls_to("echo-con")
    calls.sort(key=lambda c: c["time"])
    assert len(calls) == 8  # one completion per turn, none for the unanswered ninth message
    assert_chain(calls, prompts)
    assert [r["text"] for r in seen] == [echo_text(c["messages"]) for c in calls]


def test_agents_on_a_topic_answer_each_other_there_until_max_turns(shared):
    with shared.client(timeout=30) as room, shared.client(timeout=30) as client:
        data_of(room.request("message:subscribe", {"topics": ["room:lab"]}))
        for agent_id in ("ann", "bob"):
            data_of(client.request("agent:spawn", {"profile": "collaborator",
                                                   "agent_id": agent_id, "max_turns": 2,
                                                   "topics": ["room:lab"]}))
        published = data_of(client.request("message:publish", {
            "topic": "room:lab", "content": "Plan the experiment", "sender": "alice"}))
        assert published["delivered"] == 3  # the room's connection and both agents
        said = [next_event(room, "message:received", timeout=30)["data"] for _ in range(5)]
        assert sorted(m["sender"] for m in said) == ["alice", "ann", "ann", "bob", "bob"]
        wait_until(lambda: all(info(client, a)["messages_handled"] == 3 and
                               info(client, a)["pending"] == 0 for a in ("ann", "bob")))
        for agent_id in ("ann", "bob"):
            record = info(client, agent_id)
            assert record["turns"] == 2
            assert [t["sender"] for t in record["recent"][:2]] == \
                ["alice", "bob" if agent_id == "ann" else "ann"]
            assert record["recent"][2]["state"] == "skipped"
        history = data_of(client.request("message:history", {"topic": "room:lab"}))
        assert history["count"] == 5


def test_a_task_is_answered_to_the_spawner_and_wait_answers_only_the_caller(shared):
    with shared.client(timeout=30) as client, watch(shared) as watcher:
        client.send("agent:spawn", {"agent_id": "helper", "task": "Summarise the plan"},
                    correlation_id="spawn-1")
        pushed = next_event(client, "agent:reply", agent_id="helper")
        assert pushed["correlation_id"] == "spawn-1"
        assert "Summarise the plan" in pushed["data"]["text"]
        assert pushed["data"]["sender"] is None and pushed["data"]["turn"] == 1
        data_of(client.request("agent:spawn", {"agent_id": "other"}))
        sent = data_of(client.request("agent:send", {
            "agent_id": "helper", "content": "And the budget?", "sender": "other",
            "wait": True, "timeout_s": 30}))
        assert sent["delivered"] is True
        assert sent["reply"]["turn"] == 2
        assert sent["reply"]["request_id"] == f"helper:{sent['message_id']}"
        assert "budget" in sent["reply"]["text"]
        # Subscribers still see the reply; the sender agent does not get it in its inbox.
        assert next_event(watcher, "agent:reply", turn=2)["data"]["text"] == \
            sent["reply"]["text"]
        assert info(client, "other")["messages_handled"] == 0
        assert info(client, "other")["pending"] == 0


def test_the_deployment_guides_spawn_works_as_written(shared):
    # seeds/001, "New Event Style": profile_name is the name it spawns with
    with shared.client(timeout=30) as client, watch(shared) as watcher:
        spawned = data_of(client.request("agent:spawn", {"profile_name": "analyst",
                                                         "task": "Analyze data"}))
        assert spawned["profile"] == "analyst" and spawned["status"] == "running"
        reply = next_event(watcher, "agent:reply", agent_id=spawned["agent_id"])
        assert "Analyze data" in reply["data"]["text"]


# ---- crashes --------------------------------------------------------------------------------

def test_a_crashing_agent_is_restarted_with_backoff_then_failed(shared, shared_openai):
    with watch(shared, ("agent:status", "completion:error")) as watcher, \
            shared.client(timeout=30) as client:
        data_of(client.request("agent:spawn", {"agent_id": "crashy", "model": "broken-a",
                                               "task": "hello"}))
        statuses, errors = [], []
        while not statuses or statuses[-1]["data"]["status"] != "failed":
            message = watcher.recv()
            if message["event"] == "agent:status":
                statuses.append(message)
            elif message["event"] == "completion:error":
                errors.append(message["data"])
        got = [(m["data"]["status"], m["data"].get("attempt")) for m in statuses]
        assert got == [("restarting", 1), ("running", 1), ("restarting", 2), ("running", 2),
                       ("failed", 3)]
        delays = [m["data"]["delay_s"] for m in statuses if m["data"]["status"] == "restarting"]
        assert delays == [0.05, 0.1]  # exponential back-off
        for crashed, resumed in ((statuses[0], statuses[1]), (statuses[2], statuses[3])):
            assert resumed["timestamp"] - crashed["timestamp"] >= crashed["data"]["delay_s"] - 0.01
        assert "broken on purpose" in statuses[-1]["data"]["reason"]
        # One completion per try, each a new request id derived from the same message.
        first = errors[0]["request_id"]
        assert first.startswith("crashy:m-")
        assert [e["request_id"] for e in errors] == [first, f"{first}:1", f"{first}:2"]
        assert len(shared_openai.calls_to("broken-a")) == 3
        failed = info(client, "crashy")
        assert (failed["status"], failed["restarts"], failed["pending"]) == ("failed", 2, 1)
        assert "broken on purpose" in failed["error"]
        assert error_of(client.request("agent:send", {"agent_id": "crashy", "content": "hi",
                                                      "wait": True}))["code"] == "conflict"
        assert data_of(client.request("agent:send", {"agent_id": "crashy",
                                                     "content": "later"}))["delivered"] is False
    restart(shared)  # the failure is remembered across a restart
    with watch(shared, ("agent:status",)) as watcher, shared.client(timeout=30) as client:
        again = info(client, "crashy")
        assert (again["status"], again["error"], again["pending"]) == \
            ("failed", failed["error"], 2)
        assert data_of(client.request("agent:restart", {"agent_id": "crashy"})) == \
            {"agent_id": "crashy", "status": "running"}
        assert next_event(watcher, "agent:status", status="running")["data"]["reason"] == \
            "restarted by request"
        # A fresh set of restarts, still against a broken model.
        assert next_event(watcher, "agent:status", status="restarting")["data"]["attempt"] == 1


# ---- restarts of the daemon -----------------------------------------------------------------

def interrupted_debate(daemon, server, kill: bool, models: tuple[str, str],
                       answers_stored: int) -> dict[str, list[dict]]:
    """A 3-round debate stopped after two turns, pro's second call held at the model.

    Returns each agent's stored conversation once the debate has finished after the restart
    and the conversation holds `answers_stored` answers.
    """
    held = server.hold(models[0], call=2)
    with watch(daemon) as watcher, daemon.client(timeout=30) as client:
        start_debate(client, turns=3, pro_model=models[0], con_model=models[1])
        replies(watcher, 2)
        before = {a["agent_id"]: a["session_id"]
                  for a in data_of(client.request("agent:list"))["agents"]}
    held.wait_reached()
    restart(daemon, kill, held)  # pro's second completion is under way at the server
    with daemon.client(timeout=30) as client:
        after = {a["agent_id"]: a["session_id"]
                 for a in data_of(client.request("agent:list"))["agents"]}
        assert after == before  # the same agents, in the same sessions
        finished = wait_until(lambda: both_finished(client, 3), timeout=90)
        assert [a["restarts"] for a in finished] == [0, 0]  # a daemon stop is no crash
        return {a["agent_id"]: stored_turns(client, a["session_id"], answers_stored)
                for a in finished}


def test_sigterm_mid_conversation_exits_cleanly_and_the_conversation_goes_on(
        shared_process, shared_openai):
    stored = interrupted_debate(shared_process, shared_openai, False, ("held-pro", "held-con"),
                                answers_stored=3)
    calls = sorted(shared_openai.calls_to("held-pro") + shared_openai.calls_to("held-con"),
                   key=lambda c: c["time"])
    assert len(calls) == 6  # the call under way at SIGTERM finished; nothing ran twice
    assert_chain(calls, {"pro": calls[0]["messages"][0]["content"],
                         "con": calls[1]["messages"][0]["content"]})
    for messages in stored.values():
        assert [m["role"] for m in messages] == ["user", "assistant"] * 3


def test_kill_9_mid_conversation_restores_the_agents_and_the_conversation_goes_on(
        shared_process, shared_openai):
    models = ("held-pro-k", "held-con-k")
    stored = interrupted_debate(shared_process, shared_openai, True, models, answers_stored=3)
    calls = sorted(shared_openai.calls_to(models[0]) + shared_openai.calls_to(models[1]),
                   key=lambda c: c["time"])
    # The call cut off by the kill is asked again after the restart, once; all others once.
    distinct = []
    for call in calls:
        if all((call["model"], call["messages"]) != (c["model"], c["messages"])
               for c in distinct):
            distinct.append(call)
    assert len(distinct) == 6 and len(calls) <= 7
    assert_chain(distinct, {"pro": calls[0]["messages"][0]["content"],
                            "con": calls[1]["messages"][0]["content"]})
    for messages in stored.values():  # every turn stored once, none answered twice
        assert [m["role"] for m in messages] == ["user", "assistant"] * 3
        answered = [m["request_id"] for m in messages if m["role"] == "assistant"]
        assert len(answered) == len(set(answered))


def test_sigterm_with_a_turn_that_never_ends_exits_and_waiting_callers_are_told(
        shared_process, shared_openai):
    with shared_process.client(timeout=30) as first, \
            shared_process.client(timeout=30) as second:
        data_of(first.request("agent:spawn", {"agent_id": "stuck", "model": "hang-a"}))
        for client, text in ((first, "one"), (second, "two")):
            client.send("agent:send", {"agent_id": "stuck", "content": text, "wait": True})
        wait_until(lambda: shared_openai.count("hang-a") == 1)  # "one" is at the model
        assert shared_process.stop(signal.SIGTERM) == 0  # within shutdown_timeout, 3 s
        for client in (first, second):
            assert error_of(client.recv_reply())["code"] == "unavailable"
    shared_process.start()
    with shared_process.client() as client:
        kept = info(client, "stuck")
        assert (kept["status"], kept["pending"], kept["restarts"]) == ("running", 2, 0)


def test_terminate_or_restart_during_a_turn_leaves_exactly_the_right_tasks(shared,
                                                                           shared_openai):
    with watch(shared, ("agent:status", "agent:reply", "completion:cancelled")) as watcher, \
            shared.client(timeout=30) as client:
        for agent_id in ("gone", "again"):
            data_of(client.request("agent:spawn", {"agent_id": agent_id, "model": "gated-a",
                                                   "task": f"question for {agent_id}"}))
        wait_until(lambda: shared_openai.count("gated-a") == 2)  # both turns are at the model
        data_of(client.request("agent:terminate", {"agent_id": "gone"}))
        data_of(client.request("agent:restart", {"agent_id": "again"}))
        # Both calls in flight were cancelled; the restarted agent asks again, a new request.
        # (An earlier test's agent, terminated as that test ended, may report its own
        # cancellation after this watcher subscribed: not ours, skipped.)
        cut = []
        while len(cut) < 2:
            request_id = next_event(watcher, "completion:cancelled")["data"]["request_id"]
            if request_id.split(":")[0] in ("gone", "again"):
                cut.append(request_id)
        assert [c.split(":")[0] for c in cut] == ["gone", "again"]
        wait_until(lambda: shared_openai.count("gated-a") == 3)
        shared_openai.open_gate()
        reply = next_event(watcher, "agent:reply", timeout=30)["data"]
        assert (reply["agent_id"], reply["turn"], reply["request_id"]) == \
            ("again", 1, f"{cut[1]}:1")
        listed = data_of(client.request("agent:list"))
        assert [a["agent_id"] for a in listed["agents"]] == ["again"]
        assert listed["tasks_alive"] == 1
        assert info(client, "again")["restarts"] == 0
        assert info(client, "gone")["status"] == "terminated"
        # The router's history: no crash, no status or reply of the terminated agent.
        watcher.send("system:event_history", {"pattern": "agent:*", "limit": 1000})
        history = watcher.recv_reply()["data"]["events"]
        seen = [(e["event"], e["data"].get("agent_id"), e["data"].get("status"))
                for e in history if e["event"] in ("agent:status", "agent:reply")
                and e["data"].get("agent_id") in ("gone", "again")]
        assert seen == [("agent:status", "again", "running"), ("agent:reply", "again", None)]
    restart(shared)
    with shared.client() as client:
        assert data_of(client.request("agent:list"))["count"] == 1
        assert info(client, "gone")["status"] == "terminated"


def test_an_agent_terminated_mid_completion_is_gone_at_once_and_its_call_is_dropped(
        shared_process, shared_openai):
    with watch(shared_process, ("agent:status", "completion:cancelled")) as watcher, \
            shared_process.client(timeout=30) as client:
        idle = data_of(client.request("agent:list"))
        data_of(client.request("agent:spawn", {"agent_id": "midway", "model": "hang-b",
                                               "task": "take your time"}))
        wait_until(lambda: shared_openai.count("hang-b") == 1)  # the call is at the model
        data_of(client.request("agent:restart", {"agent_id": "midway"}))
        first = next_event(watcher, "completion:cancelled")["data"]["request_id"]
        assert first.startswith("midway:m-")
        wait_until(lambda: shared_openai.count("hang-b") == 2)  # asked again
        data_of(client.request("agent:terminate", {"agent_id": "midway"}))
        # Its task ended before agent:terminate answered.
        listed = data_of(client.request("agent:list"))
        assert (listed["count"], listed["tasks_alive"]) == (idle["count"], idle["tasks_alive"])
        second = next_event(watcher, "completion:cancelled")["data"]["request_id"]
        assert second == f"{first}:1"
        assert data_of(client.request("completion:status",
                                      {"request_id": second}))["status"] == "cancelled"
        # The model server saw both calls hung up; every task on the agent's behalf ended.
        wait_until(lambda: shared_openai.hangups["hang-b"] == 2)
        wait_until(lambda: data_of(client.request("agent:list"))["daemon_tasks"] <=
                   idle["daemon_tasks"])
        assert shared_openai.count("hang-b") == 2
        # No crash: no restart was scheduled, and the log says nothing of one.
        watcher.send("system:event_history", {"pattern": "agent:status", "limit": 1000})
        statuses = [(e["data"]["status"], e["data"].get("reason"))
                    for e in watcher.recv_reply()["data"]["events"]
                    if e["data"]["agent_id"] == "midway"]
        assert statuses == [("running", "restarted by request")]
    log = shared_process.read_output()
    assert "agent_store_open" in log  # the daemon's log, where a crash would be told
    assert [line for line in log.splitlines()
            if "agent_crashed" in line and "agent_id=midway" in line] == []


def test_a_256_character_agent_id_has_bounded_ids_that_a_kill_9_does_not_change(
        shared_process, shared_openai):
    long_id = "a" * 256
    held = shared_openai.hold("held-long")
    with shared_process.client(timeout=30) as client:
        spawned = data_of(client.request("agent:spawn", {"agent_id": long_id, "task": "hello",
                                                         "model": "held-long"}))
        assert len(spawned["session_id"]) <= 128 and spawned["session_id"].startswith("a" * 64)
        held.wait_reached()  # the call is at the model
    restart(shared_process, kill=True, held=held)
    with shared_process.client(timeout=30) as client:
        answered = wait_until(lambda: info(client, long_id)["recent"])[0]
        request_id = answered["request_id"]
        assert len(request_id) <= 128 and request_id.startswith("a" * 64)
        # The agent asked again under the id it used before the kill: the completion journal
        # answered it from the request it resumed, so the model was not asked a third time.
        status = data_of(client.request("completion:status", {"request_id": request_id}))
        assert status["resumed"] is True
        assert shared_openai.count("held-long") == 2
        sent = data_of(client.request("agent:send", {"agent_id": long_id, "content": "again",
                                                     "wait": True}))
        assert sent["reply"]["request_id"] != request_id
        assert len(sent["reply"]["request_id"]) <= 128


def test_topic_subscriptions_come_back_after_a_restart(shared):
    with shared.client(timeout=30) as client:
        data_of(client.request("agent:spawn", {"agent_id": "reader", "topics": ["news"],
                                               "task": "Read the news"}))
        wait_until(lambda: info(client, "reader")["turns"] == 1)
    restart(shared)
    with shared.client(timeout=30) as room:
        data_of(room.request("message:subscribe", {"topics": ["news"]}))
        published = data_of(room.request("message:publish", {
            "topic": "news", "content": "Rain tomorrow", "sender": "weather"}))
        assert published["delivered"] == 2  # this connection and the restored agent
        answer = next_event(room, "message:received", sender="reader")["data"]
        assert answer["topic"] == "news" and "Rain tomorrow" in answer["content"]
        assert info(room, "reader")["turns"] == 2
        # Marked published right after, so it is not published again after a restart.
        wait_until(lambda: info(room, "reader")["recent"][-1]["state"] == "done")


# ---- scale and errors -------------------------------------------------------------------------

def pipelined(client, event: str, payloads: list[dict], batch: int = 100) -> list[dict]:
    answers = []
    for start in range(0, len(payloads), batch):
        chunk = payloads[start:start + batch]
        for payload in chunk:
            client.send(event, payload)
        answers += [client.recv_reply() for _ in chunk]
    return answers


def test_a_thousand_agents_spawned_and_terminated_leave_no_tasks_behind(shared):
    with shared.client(timeout=60) as client:
        idle = data_of(client.request("agent:list"))
        assert idle["tasks_alive"] == 0
        ids = [f"bulk-{n}" for n in range(1000)]
        spawned = pipelined(client, "agent:spawn", [{"agent_id": i} for i in ids])
        assert all(data_of(r)["status"] == "running" for r in spawned)
        busy = data_of(client.request("agent:list"))
        assert busy["count"] == 1000 and busy["tasks_alive"] == 1000
        ended = pipelined(client, "agent:terminate", [{"agent_id": i} for i in ids])
        assert all(data_of(r)["status"] == "terminated" for r in ended)
        # No more tasks than before (a one-shot task of another plugin may have ended since).
        after = wait_until(lambda: (lambda d: d["daemon_tasks"] <= idle["daemon_tasks"] and d)(
            data_of(client.request("agent:list"))), timeout=10)
        assert (after["count"], after["tasks_alive"]) == (0, 0)
        assert busy["daemon_tasks"] - after["daemon_tasks"] >= 1000  # the figure saw them
        terminated = data_of(client.request("agent:list", {"status": "terminated"}))["agents"]
        assert set(ids) <= {a["agent_id"] for a in terminated}


@pytest.mark.parametrize("event,data,code", [
    ("agent:spawn", {"profile": "nobody"}, "not_found"),
    ("agent:spawn", {"profile_name": "nobody"}, "not_found"),
    ("agent:spawn", {"profile": "analyst", "profile_name": "analyst"}, "validation_error"),
    ("agent:spawn", {"profile": "assistant", "config": {"name": "x"}}, "validation_error"),
    ("agent:spawn", {"agent_id": "no spaces allowed"}, "validation_error"),
    ("agent:spawn", {"agent_id": "x" * 257}, "validation_error"),
    ("agent:spawn", {"config": {"name": "hot", "temperature": 5}}, "validation_error"),
    ("agent:spawn", {"config": {"name": "x", "colour": "red"}}, "validation_error"),
    ("agent:spawn", {"max_turns": 0}, "validation_error"),
    ("agent:spawn", {"topics": ["room:*"], "agent_id": "t", "task": ""}, "validation_error"),
    ("agent:terminate", {"agent_id": "ghost"}, "not_found"),
    ("agent:terminate", {}, "validation_error"),
    ("agent:info", {"agent_id": "ghost"}, "not_found"),
    ("agent:restart", {"agent_id": "ghost"}, "not_found"),
    ("agent:send", {"agent_id": "ghost", "content": "hi"}, "not_found"),
    ("agent:send", {"agent_id": "a1", "content": ""}, "validation_error"),
    ("agent:send", {"agent_id": "a1", "content": "hi", "sender": "a1"}, "validation_error"),
    ("agent:send", {"agent_id": "a1", "content": {"not": "text"}}, "validation_error"),
    ("agent:send", {"agent_id": "a1", "content": "hi", "timeout_s": -1}, "validation_error"),
    ("agent:list", {"status": "sleeping"}, "validation_error"),
    ("agent:profiles", {"extra": 1}, "validation_error"),
])
def test_user_errors_are_coded_replies_and_the_connection_keeps_working(shared, event, data,
                                                                         code):
    with shared.client() as client:
        data_of(client.request("agent:spawn", {"agent_id": "a1"}))
        assert error_of(client.request(event, data))["code"] == code
        assert data_of(client.request("system:health"))["status"] == "healthy"
        assert info(client, "a1")["status"] == "running"


def test_taken_and_terminated_ids_are_conflicts(shared):
    with shared.client() as client:
        data_of(client.request("agent:spawn", {"agent_id": "solo"}))
        assert error_of(client.request("agent:spawn", {"agent_id": "solo"}))["code"] == \
            "conflict"
        assert data_of(client.request("agent:terminate", {"agent_id": "solo"})) == \
            {"agent_id": "solo", "status": "terminated"}
        for event, data in (("agent:send", {"agent_id": "solo", "content": "hi"}),
                            ("agent:restart", {"agent_id": "solo"})):
            assert error_of(client.request(event, data))["code"] == "conflict"
        assert error_of(client.request("agent:terminate", {"agent_id": "solo"}))["code"] == \
            "not_found"
        assert info(client, "solo")["status"] == "terminated"
        # A terminated agent's id may be used again.
        assert data_of(client.request("agent:spawn", {"agent_id": "solo"}))["status"] == \
            "running"


# ---- profiles -----------------------------------------------------------------------------------

BUILT_IN = {"assistant", "debater", "collaborator", "teacher", "student", "creative", "critic",
            "analyst", "researcher"}


def test_profiles_are_built_in_or_read_from_files_and_bad_files_are_reported(daemon_factory,
                                                                              workdir):
    profiles_dir = workdir / "var" / "agent_profiles"
    profiles_dir.mkdir(parents=True)
    (profiles_dir / "pirate.yaml").write_text(
        "system_prompt: Talk like a pirate.\ntemperature: 1.1\nmax_turns: 3\n")
    (profiles_dir / "debater.json").write_text(
        '{"name": "debater", "system_prompt": "Argue briefly.", "max_turns": 2}')
    (profiles_dir / "typo.yaml").write_text("system_promt: oops\n")
    (profiles_dir / "broken.json").write_text("{not json")
    daemon = daemon_factory()
    with daemon.client() as client:
        listed = data_of(client.request("agent:profiles"))
        by_name = {p["name"]: p for p in listed["profiles"]}
        assert set(by_name) == BUILT_IN | {"pirate"}
        assert by_name["assistant"]["source"] == "builtin"
        assert all(p["model"] is None and p["system_prompt"] and p["max_turns"] >= 1
                   for p in listed["profiles"])
        assert by_name["pirate"] == {"name": "pirate", "model": None, "temperature": 1.1,
                                     "system_prompt": "Talk like a pirate.", "max_turns": 3,
                                     "tools": [], "mcp_servers": {}, "max_tool_steps": None,
                                     "on_busy": "enqueue",
                                     "source": str(profiles_dir / "pirate.yaml")}
        assert by_name["debater"]["system_prompt"] == "Argue briefly."
        errors = {e["file"].rsplit("/", 1)[1]: e["error"] for e in listed["errors"]}
        assert set(errors) == {"typo.yaml", "broken.json"}
        assert "system_promt" in errors["typo.yaml"]
        data_of(client.request("agent:spawn", {"profile": "pirate", "agent_id": "jack"}))
        jack = info(client, "jack")
        assert (jack["profile"], jack["max_turns"], jack["system_prompt"]) == \
            ("pirate", 3, "Talk like a pirate.")
        # A file added while the daemon runs is used at once.
        (profiles_dir / "owl.yml").write_text("system_prompt: Hoot.\n")
        assert data_of(client.request("agent:spawn", {"profile": "owl"}))["profile"] == "owl"
        assert data_of(client.request("system:health"))["plugins"]["failed"] == 0
