"""The orchestration plugin with the real agent and completion plugins.

The tests run on the in-process daemon (tests/inprocess.py), except the one of a daemon that
shuts down (it exits) on a daemon process.

Models: the built-in offline model (deterministic; it quotes key words of what it was told) and
tests/fake_openai_server.py (`echo` repeats the conversation, `pause` answers after one second,
`held` as echo but for the call a test holds, `broken` always fails).
"""
from __future__ import annotations

import time

import pytest

from conftest import data_of, error_of
from fake_openai_server import FakeOpenAIServer
from ksi_daemon.plugins.completion.offline_model import key_words

FAKE_MODELS = ("echo", "pause", "held", "broken")


@pytest.fixture
def daemon(inprocess_daemon):
    return inprocess_daemon


@pytest.fixture
def fake_openai():
    with FakeOpenAIServer() as server:
        yield server


def with_fake_models(api_base: str) -> dict:
    aliases = {name: {"model": f"openai/{name}", "api_base": api_base, "api_key": "sk-test"}
               for name in FAKE_MODELS}
    return {"plugins": {"completion": {"aliases": aliases,
                                       "retry": {"max_attempts": 1}},
                        "agent": {"max_restarts": 0}}}


def start(client, **request) -> dict:
    return data_of(client.request("orchestration:start", request))


def pushes_until_finished(client, orchestration_id: str) -> tuple[list[dict], dict]:
    """The orchestration:turn pushes of one run, in arrival order, and its finished event."""
    turns = []
    while True:
        message = client.recv()
        if message["type"] != "event" or \
                message["data"].get("orchestration_id") != orchestration_id:
            continue
        if message["event"] == "orchestration:turn":
            turns.append(message["data"])
        elif message["event"] == "orchestration:finished":
            return turns, message["data"]


def sends_to(client, agents: list[dict]) -> int:
    """How many agent:send requests went to these agents (from the daemon's event history)."""
    ids = {agent["agent_id"] for agent in agents}
    history = data_of(client.request("system:event_history",
                                     {"limit": 1000, "pattern": "agent:send"}))["events"]
    return sum(event["data"].get("agent_id") in ids for event in history)


def live_agent_ids(client) -> set[str]:
    return {a["agent_id"] for a in data_of(client.request("agent:list"))["agents"]}


def test_a_debate_on_the_offline_model_runs_to_its_end_by_itself(daemon):
    with daemon.client(timeout=60) as starter, daemon.client(timeout=60) as watcher:
        assert data_of(watcher.request("system:subscribe", {"patterns": ["orchestration:*"]}))
        started = start(starter, mode="debate", topic="Should cities ban private cars?",
                        rounds=4)
        assert started["status"] == "running" and started["rounds"] == 4
        proponent, opponent = started["agents"]
        assert (proponent["role"], opponent["role"]) == ("proponent", "opponent")
        assert proponent["profile"] == opponent["profile"] == "debater"
        run_agents = {proponent["agent_id"], opponent["agent_id"]}
        assert run_agents <= live_agent_ids(starter)

        turns, finished = pushes_until_finished(starter, started["orchestration_id"])

        # Two agents, four rounds: eight turns, the speakers alternating.
        assert [t["turn"] for t in turns] == list(range(1, 9))
        assert [t["round"] for t in turns] == [1, 1, 2, 2, 3, 3, 4, 4]
        assert [t["speaker"] for t in turns] == \
            [proponent["agent_id"], opponent["agent_id"]] * 4
        assert [t["role"] for t in turns] == ["proponent", "opponent"] * 4
        # Each agent speaks in its own session, and knows its side (its instructions come first).
        assert {t["session_id"] for t in turns[0::2]} == {proponent["session_id"]}
        assert {t["session_id"] for t in turns[1::2]} == {opponent["session_id"]}
        assert all("You are the proponent" in t["text"] for t in turns[0::2])
        assert all("You are the opponent" in t["text"] for t in turns[1::2])
        # The first speaker answers the topic; every later one answers the previous speaker.
        assert "Should cities ban private cars?" in turns[0]["text"]
        for before, after in zip(turns, turns[1:]):
            assert f'You said: "{before["text"][:40]}' in after["text"]
            assert all(word in after["text"] for word in key_words(before["text"])[:2])

        assert finished["status"] == "finished" and finished["turns"] == 8
        assert finished["session_ids"] == [proponent["session_id"], opponent["session_id"]]
        assert finished.get("reason") is None

        # The subscriber saw the same conversation, turn for turn, and its end.
        seen_turns, seen_finished = pushes_until_finished(watcher, started["orchestration_id"])
        assert seen_turns == turns and seen_finished == finished

        # No turn follows the end; the agents are gone; status keeps the transcript.
        starter.send("orchestration:status", {"orchestration_id": started["orchestration_id"]})
        status = starter.recv()
        assert status["type"] == "reply", status  # not a late turn
        detail = data_of(status)
        assert detail["status"] == "finished" and detail["turns"] == 8 and detail["round"] == 4
        assert [t["text"] for t in detail["transcript"]] == [t["text"] for t in turns]
        assert not run_agents & live_agent_ids(starter)


@pytest.mark.daemon("inprocess")
def test_a_debate_on_a_remote_model_answers_the_previous_turn_word_for_word(
        daemon_factory, fake_openai):
    daemon = daemon_factory(config=with_fake_models(fake_openai.api_base))
    with daemon.client(timeout=60) as client:
        started = start(client, mode="debate", topic="Is P=NP?", rounds=4, model="echo")
        turns, finished = pushes_until_finished(client, started["orchestration_id"])
    assert finished["status"] == "finished" and len(turns) == 8
    # The echo model repeats what it was sent: each turn carries the previous one whole.
    assert "Is P=NP?" in turns[0]["text"]
    for before, after in zip(turns, turns[1:]):
        assert after["text"].startswith(f"turn {(after['round'])}: you said '{before['text']}'")
    # And each agent's session holds its side of the debate: the model saw earlier turns.
    last_call = fake_openai.calls_to("echo")[-1]["messages"]
    assert any(m["role"] == "system" and "You are the opponent" in m["content"]
               for m in last_call)
    assert sum(m["role"] == "user" for m in last_call) == 4


CASTS = [
    ("collaboration", 3, ["proposer", "builder", "reviewer"]),
    ("teaching", 3, ["teacher", "student", "student"]),
    ("brainstorm", None, ["ideator", "stretcher", "critic"]),
    ("analysis", 3, ["analyst", "researcher", "synthesizer"]),
    ("debate", 4, ["proponent", "opponent", "proponent", "opponent"]),
]


def test_every_mode_casts_its_roles_and_runs_to_its_end_side_by_side(daemon):
    with daemon.client(timeout=60) as client:
        runs, early = {}, []
        for mode, agents, roles in CASTS:  # all five run at the same time
            request = {"mode": mode, "topic": "How should a small team review code?",
                       "rounds": 1, **({"agents": agents} if agents else {})}
            # The runs started first may push turns before the next start's reply: keep them.
            client.send("orchestration:start", request)
            while (message := client.recv())["type"] != "reply":
                early.append(message)
            started = data_of(message)
            assert [a["role"] for a in started["agents"]] == roles
            assert len({a["agent_id"] for a in started["agents"]}) == len(roles)
            runs[started["orchestration_id"]] = (roles, [])
        finished = {}
        while len(finished) < len(runs):
            message = early.pop(0) if early else client.recv()
            run_id = message["data"]["orchestration_id"]
            if message["event"] == "orchestration:turn":
                assert run_id not in finished
                runs[run_id][1].append(message["data"])
            elif message["event"] == "orchestration:finished":
                finished[run_id] = message["data"]
        listed = data_of(client.request("orchestration:status"))["orchestrations"]
    assert {o["orchestration_id"]: o["status"] for o in listed} == \
        dict.fromkeys(runs, "finished")
    for run_id, (roles, turns) in runs.items():
        assert finished[run_id]["status"] == "finished"
        assert [t["role"] for t in turns] == roles
        assert all(f"You are the {role}" in t["text"] for t, role in zip(turns, roles))


def test_modes_lists_every_mode_with_roles_from_the_built_in_profiles(daemon):
    modes = daemon.request("orchestration:modes")["data"]
    profiles = {p["name"] for p in daemon.request("agent:profiles")["data"]["profiles"]}
    assert [m["mode"] for m in modes["modes"]] == \
        ["debate", "collaboration", "teaching", "brainstorm", "analysis"]
    assert modes["count"] == 5
    for mode in modes["modes"]:
        assert mode["description"] and mode["default_agents"] >= 2 and mode["default_rounds"] >= 1
        assert {r["profile"] for r in mode["roles"]} <= profiles
        assert all(r["instruction"] for r in mode["roles"])
    debate = modes["modes"][0]
    assert [(r["role"], r["profile"]) for r in debate["roles"]] == \
        [("proponent", "debater"), ("opponent", "debater")]
    assert "for" in debate["roles"][0]["instruction"]
    assert "against" in debate["roles"][1]["instruction"]


@pytest.mark.daemon("inprocess")
def test_terminate_stops_a_run_mid_way_and_its_agents(daemon_factory, fake_openai):
    config = with_fake_models(fake_openai.api_base)
    config["plugins"]["orchestration"] = {"max_running": 1}
    daemon = daemon_factory(config=config)
    with daemon.client(timeout=60) as client, daemon.client(timeout=60) as other:
        started = start(client, mode="debate", topic="Is P=NP?", rounds=20, model="pause")
        run_id = started["orchestration_id"]
        busy = error_of(other.request("orchestration:start",
                                      {"mode": "debate", "topic": "One more?"}))
        assert busy["code"] == "rate_limited" and "max_running" in busy["message"]
        first = client.recv()
        assert first["event"] == "orchestration:turn" and first["data"]["turn"] == 1
        running = data_of(other.request("orchestration:status", {"orchestration_id": run_id}))
        assert running["status"] == "running" and running["turns"] >= 1

        assert data_of(other.request("orchestration:terminate",
                                     {"orchestration_id": run_id})) == \
            {"orchestration_id": run_id, "status": "terminated"}

        turns, finished = pushes_until_finished(client, run_id)
        assert finished["status"] == "terminated" and finished["turns"] == 1 + len(turns)
        # Past the turn that was in flight, no agent is asked anything and nothing is pushed.
        sends_at_end = sends_to(other, started["agents"])
        assert finished["turns"] <= sends_at_end <= finished["turns"] + 1
        time.sleep(1.5)
        assert sends_to(other, started["agents"]) == sends_at_end
        client.send("system:health", {}, correlation_id="later")
        assert client.recv()["correlation_id"] == "later"

        detail = data_of(other.request("orchestration:status", {"orchestration_id": run_id}))
        assert detail["status"] == "terminated" and detail["turns"] == finished["turns"]
        assert not {a["agent_id"] for a in started["agents"]} & live_agent_ids(other)
        # Terminating again answers the final status; the run stays visible.
        assert data_of(other.request("orchestration:terminate",
                                     {"orchestration_id": run_id}))["status"] == "terminated"
        listed = data_of(other.request("orchestration:status"))
        assert [o["orchestration_id"] for o in listed["orchestrations"]] == [run_id]
        assert listed["count"] == 1 and "transcript" not in listed["orchestrations"][0]
        # Its slot is free again.
        assert start(other, mode="debate", topic="One more?", rounds=1)["status"] == "running"


@pytest.mark.daemon("inprocess")
def test_an_agent_that_fails_ends_the_run_as_failed_with_the_reason(daemon_factory,
                                                                    fake_openai):
    daemon = daemon_factory(config=with_fake_models(fake_openai.api_base))
    with daemon.client(timeout=60) as client:
        started = start(client, mode="debate", topic="Is P=NP?", rounds=2, model="broken")
        turns, finished = pushes_until_finished(client, started["orchestration_id"])
        assert turns == []
        assert finished["status"] == "failed" and finished["turns"] == 0
        assert started["agents"][0]["agent_id"] in finished["reason"]
        detail = data_of(client.request("orchestration:status",
                                        {"orchestration_id": started["orchestration_id"]}))
        assert detail["status"] == "failed" and detail["reason"] == finished["reason"]
        assert not {a["agent_id"] for a in started["agents"]} & live_agent_ids(client)
        assert data_of(client.request("system:health"))["status"] == "healthy"


BAD_STARTS = [
    ({"mode": "shouting", "topic": "x"}, "mode"),
    ({"mode": "debate", "topic": "x", "agents": 1}, None),
    ({"mode": "debate", "topic": "x", "agents": 9}, None),
    ({"mode": "teaching", "topic": "x", "agents": 0}, None),
    ({"mode": "debate", "topic": "x", "rounds": 0}, "rounds"),
    ({"mode": "debate", "topic": "x", "rounds": 51}, "rounds"),
    ({"mode": "debate", "topic": "x", "rounds": "many"}, "rounds"),
    ({"mode": "debate", "topic": "   "}, "topic"),
    ({"mode": "debate"}, "topic"),
    ({"mode": "debate", "topic": "x", "speakers": 2}, "speakers"),
]


def test_bad_start_requests_answer_validation_error_and_start_nothing(daemon):
    with daemon.client() as client:
        for request_data, field in BAD_STARTS:
            error = error_of(client.request("orchestration:start", request_data))
            assert error["code"] == "validation_error", request_data
            if field is not None:
                assert [field] in [d["loc"] for d in error["details"]], error
        unknown_mode = error_of(client.request("orchestration:start",
                                               {"mode": "shouting", "topic": "x"}))
        assert "debate" in unknown_mode["details"][0]["msg"]  # it names the modes there are
        # Nothing was started, nothing was spawned, the connection still works.
        assert data_of(client.request("orchestration:status"))["count"] == 0
        assert live_agent_ids(client) == set()


def test_unknown_ids_answer_not_found(daemon):
    with daemon.client() as client:
        for event in ("orchestration:status", "orchestration:terminate"):
            error = error_of(client.request(event, {"orchestration_id": "orch-nope"}))
            assert error["code"] == "not_found" and "orch-nope" in error["message"]
        assert data_of(client.request("orchestration:modes"))["count"] == 5


def test_a_daemon_that_stops_ends_running_orchestrations_as_terminated(daemon_factory,
                                                                       fake_openai):
    daemon = daemon_factory(config=with_fake_models(fake_openai.api_base))
    second_turn = fake_openai.hold("held", call=2)
    with daemon.client(timeout=60) as client:
        started = start(client, mode="debate", topic="Is P=NP?", rounds=20, model="held")
        assert client.recv()["event"] == "orchestration:turn"
        second_turn.wait_reached()  # the run is mid-way when the daemon is told to stop
        client.send("system:shutdown", {}, correlation_id="bye")
        while (reply := client.recv())["type"] != "reply":
            pass
        assert reply["correlation_id"] == "bye" and data_of(reply)
        second_turn.release()
        turns, finished = pushes_until_finished(client, started["orchestration_id"])
    assert finished["status"] == "terminated" and "shutting down" in finished["reason"]
    assert daemon.wait(30) == 0


def test_ended_orchestrations_are_forgotten_past_the_configured_number(inprocess_factory):
    daemon = inprocess_factory(config={"plugins": {"orchestration": {"finished_kept": 1}}})
    with daemon.client(timeout=60) as client:
        first = start(client, mode="debate", topic="Tea or coffee?", rounds=1)
        pushes_until_finished(client, first["orchestration_id"])
        second = start(client, mode="debate", topic="Tea or coffee?", rounds=1)
        pushes_until_finished(client, second["orchestration_id"])
        listed = data_of(client.request("orchestration:status"))
        assert [o["orchestration_id"] for o in listed["orchestrations"]] == \
            [second["orchestration_id"]]
        gone = error_of(client.request("orchestration:status",
                                       {"orchestration_id": first["orchestration_id"]}))
        assert gone["code"] == "not_found"


def test_a_run_goes_on_when_the_client_that_started_it_goes_away(daemon):
    with daemon.client(timeout=60) as watcher:
        data_of(watcher.request("system:subscribe", {"patterns": ["orchestration:*"]}))
        with daemon.client() as starter:
            started = start(starter, mode="brainstorm", topic="Names for a cat", rounds=2)
        turns, finished = pushes_until_finished(watcher, started["orchestration_id"])
    assert finished["status"] == "finished" and len(turns) == finished["turns"] == 6
