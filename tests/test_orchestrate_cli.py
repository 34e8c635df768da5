"""interfaces/orchestrate.py as a user runs it: a subprocess against a real daemon."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys

import orjson
import pytest

from conftest import ROOT, data_of
from fake_openai_server import FakeOpenAIServer

SCRIPT = ROOT / "interfaces" / "orchestrate.py"


# The daemon runs in this process behind its real Unix socket (tests/inprocess.py);
# orchestrate.py is still a real process talking to it over that socket.
pytestmark = pytest.mark.daemon("inprocess")


@pytest.fixture
def fake_openai():
    with FakeOpenAIServer() as server:
        yield server


def cli_env(socket_path) -> dict:
    env = {**os.environ, "KSI_SOCKET_PATH": str(socket_path)}
    env.pop("KSI_VAR_DIR", None)
    return env


def orchestrate(daemon, *args, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], env=cli_env(daemon.socket_path),
                          cwd=daemon.workdir, capture_output=True, text=True, timeout=timeout)


def test_a_debate_is_printed_turn_by_turn_and_summed_up(daemon):
    result = orchestrate(daemon, "Is P=NP?", "--mode", "debate")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert re.search(r'^Debate on "Is P=NP\?": 2 agents, 4 rounds \((orch-\w+)\)', out, re.M)
    run_id = re.search(r"\((orch-\w+)\)", out).group(1)
    headings = re.findall(r"^\[round (\d+), turn (\d+)\] (\w+) \((\S+)\):$", out, re.M)
    assert [(int(r), int(t)) for r, t, _, _ in headings] == \
        [(r, t) for t, r in zip(range(1, 9), [1, 1, 2, 2, 3, 3, 4, 4])]
    assert [role for _, _, role, _ in headings] == ["proponent", "opponent"] * 4
    assert [agent for _, _, _, agent in headings] == \
        [f"{run_id}-proponent", f"{run_id}-opponent"] * 4
    assert re.search(r"^Finished: 8 turns in \d+\.\d s$", out, re.M)
    detail = data_of(daemon.request("orchestration:status", {"orchestration_id": run_id}))
    assert detail["status"] == "finished"
    assert f"Sessions: {', '.join(detail['session_ids'])}" in out
    # What was printed under each heading is that turn's text (wrapped for the terminal).
    printed = re.split(r"^\[round \d+, turn \d+\] .*$", out, flags=re.M)[1:]
    for turn, block in zip(detail["transcript"], printed):
        assert " ".join(turn["text"].split()) in " ".join(block.split())


def test_json_prints_one_object_per_line(daemon):
    result = orchestrate(daemon, "Rust or Go?", "--rounds", "2", "--json")
    assert result.returncode == 0, result.stderr
    lines = [orjson.loads(line) for line in result.stdout.splitlines()]
    assert [line["event"] for line in lines] == \
        ["orchestration:started"] + ["orchestration:turn"] * 4 + ["orchestration:finished"]
    started, turns, finished = lines[0]["data"], lines[1:-1], lines[-1]["data"]
    assert started["mode"] == "debate" and started["rounds"] == 2
    assert [t["data"]["speaker"] for t in turns] == [a["agent_id"] for a in started["agents"]] * 2
    assert finished["status"] == "finished" and finished["turns"] == 4


def test_list_modes_shows_every_mode(daemon):
    result = orchestrate(daemon, "--list-modes")
    assert result.returncode == 0, result.stderr
    for mode in ("debate", "collaboration", "teaching", "brainstorm", "analysis"):
        assert re.search(rf"^{mode} ", result.stdout, re.M)
    assert "proponent (debater), opponent (debater)" in result.stdout
    # --socket finds the daemon without any environment variable.
    env = {k: v for k, v in os.environ.items() if not k.startswith("KSI_")}
    as_json = subprocess.run([sys.executable, str(SCRIPT), "--list-modes", "--json", "--socket",
                              str(daemon.socket_path)], env=env, cwd=ROOT,
                             capture_output=True, text=True, timeout=60)
    assert as_json.returncode == 0, as_json.stderr
    assert [orjson.loads(line)["data"]["mode"] for line in as_json.stdout.splitlines()] == \
        ["debate", "collaboration", "teaching", "brainstorm", "analysis"]


def test_what_the_daemon_refuses_is_a_readable_usage_error(daemon):
    result = orchestrate(daemon, "Is P=NP?", "--agents", "9")
    assert result.returncode == 2
    assert result.stderr.strip() == "orchestrate: debate takes 2 to 8 agents, not 9"
    too_long = orchestrate(daemon, "Is P=NP?", "--rounds", "150")
    assert too_long.returncode == 2
    assert too_long.stderr.strip() == \
        "orchestrate: --rounds: input should be less than or equal to 50"
    assert data_of(daemon.request("orchestration:status"))["count"] == 0
    no_topic = orchestrate(daemon, "--mode", "debate")
    assert no_topic.returncode == 2 and "TOPIC" in no_topic.stderr


def test_without_a_daemon_it_says_how_to_start_one(workdir):
    result = subprocess.run([sys.executable, str(SCRIPT), "Is P=NP?"],
                            env=cli_env(workdir / "nobody.sock"), cwd=workdir,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "no KSI daemon is listening" in result.stderr
    assert "./daemon_control.py start" in result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""


def start_a_long_debate(daemon_factory, fake_openai):
    """The CLI running a 20-round debate on a model that takes its time: (daemon, process)."""
    aliases = {"pause": {"model": "openai/pause", "api_base": fake_openai.api_base,
                         "api_key": "sk-test"}}
    daemon = daemon_factory(config={"plugins": {"completion": {"aliases": aliases}}})
    proc = subprocess.Popen([sys.executable, str(SCRIPT), "Is P=NP?", "--rounds", "20",
                             "--model", "pause"], env=cli_env(daemon.socket_path),
                            cwd=daemon.workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    return daemon, proc


def test_ctrl_c_terminates_the_orchestration_in_the_daemon(daemon_factory, fake_openai):
    daemon, proc = start_a_long_debate(daemon_factory, fake_openai)
    try:
        header = proc.stdout.readline()
        run_id = re.search(r"\((orch-\w+)\)", header).group(1)
        while not proc.stdout.readline().startswith("[round 1, turn 1]"):
            pass
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert f"interrupted: orchestration {run_id} is terminated in the daemon" in err
    assert "Traceback" not in err
    assert re.search(r"^Terminated: \d+ turns? in \d+\.\d s$", out, re.M)
    detail = data_of(daemon.request("orchestration:status", {"orchestration_id": run_id}))
    assert detail["status"] == "terminated" and detail["turns"] < 40
    live = {a["agent_id"] for a in data_of(daemon.request("agent:list"))["agents"]}
    assert not {a["agent_id"] for a in detail["agents"]} & live


def test_a_reader_that_goes_away_terminates_the_orchestration(daemon_factory, fake_openai):
    daemon, proc = start_a_long_debate(daemon_factory, fake_openai)
    try:
        run_id = re.search(r"\((orch-\w+)\)", proc.stdout.readline()).group(1)
        proc.stdout.close()  # as `| head -1` does
        err = proc.stderr.read()
        assert proc.wait(timeout=60) == 1
    finally:
        if proc.poll() is None:
            proc.kill()
    assert f"the output was closed: orchestration {run_id} is terminated" in err
    assert "Traceback" not in err
    detail = data_of(daemon.request("orchestration:status", {"orchestration_id": run_id}))
    assert detail["status"] == "terminated"


def test_agents_given_tools_call_them_and_their_turns_quote_the_results(daemon):
    daemon.request("state:set", {"namespace": "tools", "key": "answer", "value": 7731})
    topic = 'What is stored?\n/tool state:get {"namespace": "tools", "key": "answer"}'
    result = orchestrate(daemon, topic, "--rounds", "1", "--tools", "state:get,state:list")
    assert result.returncode == 0, result.stderr
    assert "  tools: state:get, state:list" in result.stdout
    run_id = re.search(r"\((orch-\w+)\)", result.stdout).group(1)
    detail = data_of(daemon.request("orchestration:status", {"orchestration_id": run_id}))
    first = detail["transcript"][0]
    # The first speaker hears the topic, whose /tool line makes the offline model call it.
    assert first["text"].startswith("I used my tools. state_get answered")
    assert "7731" in first["text"]
    stored = data_of(daemon.request("conversation:get", {"session_id": first["session_id"]}))
    roles = [m["role"] for m in stored["messages"]]
    assert "tool" in roles and '"value":7731' in stored["messages"][roles.index("tool")]["content"]
    # The profiles' own tools (none) would have made the model answer in words only.
    plain = orchestrate(daemon, topic, "--rounds", "1")
    assert plain.returncode == 0, plain.stderr
    assert "I used my tools" not in plain.stdout


def test_unknown_tools_are_refused_before_any_agent_is_spawned(daemon):
    before = data_of(daemon.request("agent:list", {}))["count"]
    result = orchestrate(daemon, "Anything", "--tools", "state:get,no:such")
    assert result.returncode == 1
    assert "orchestrate: no tool named no:such" in result.stderr
    assert data_of(daemon.request("agent:list", {}))["count"] == before
