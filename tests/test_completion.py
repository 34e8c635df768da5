"""The completion service, through the real daemon, its socket and local model servers.

Remote models are played by tests/fake_openai_server.py (an OpenAI-compatible HTTP server on
loopback) and, for `claude-cli/...`, by the real `claude` tool pointed at
tests/fake_anthropic_server.py. Nothing here touches the internet.
"""
from __future__ import annotations

import fcntl
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import orjson
import pytest

from conftest import data_of
from fake_anthropic_server import FakeAnthropicServer
from fake_openai_server import FakeOpenAIServer, echo_text, usage_for

TERMINAL = ("completion:result", "completion:error", "completion:cancelled")
BEHAVIOURS = ("echo", "jitter", "pause", "held", "slow", "hang", "ratelimited-a", "broken-a")
CLAUDE_CODE_VERSION = "2.1.100"  # needs node >= 18; the newest releases need node >= 22
CLAUDE_CODE_DIR = Path(os.environ.get("KSI_TEST_CLAUDE_CODE_DIR", "/tmp/ksi-test-claude-code"))


@pytest.fixture
def fake_openai():
    with FakeOpenAIServer() as server:
        yield server


def completion_config(api_base: str, **settings) -> dict:
    aliases = {name: {"model": f"openai/{name}", "api_base": api_base, "api_key": "sk-test"}
               for name in BEHAVIOURS}
    return {"plugins": {"completion": {
        "aliases": aliases, "retry": {"max_attempts": 3, "base_delay_s": 0.05}, **settings}}}


def start_async(client, data: dict, cid: str) -> str:
    """Send completion:async; return its request id (pushes read meanwhile are kept)."""
    client.send("completion:async", data, correlation_id=cid)
    client.kept = getattr(client, "kept", [])
    while True:
        message = client.recv()
        if message["type"] == "reply" and message["correlation_id"] == cid:
            assert "error" not in message, message
            return message["data"]["request_id"]
        client.kept.append(message)


def ask(client, event: str, data: dict | None = None) -> dict:
    """A request whose reply is returned while pushes read meanwhile are kept for later."""
    client.send(event, data, correlation_id=f"ask-{time.monotonic_ns()}")
    client.kept = getattr(client, "kept", [])
    while True:
        message = client.recv()
        if message["type"] == "reply":
            return message
        client.kept.append(message)


def pushes_until_end(client, request_id: str, timeout: float = 30.0) -> list[dict]:
    """Every push about `request_id` until its terminal one, in arrival order."""
    seen = [m for m in getattr(client, "kept", []) if m["data"].get("request_id") == request_id]
    client.kept = [m for m in getattr(client, "kept", []) if m not in seen]
    deadline = time.monotonic() + timeout
    while not any(m["event"] in TERMINAL for m in seen):
        assert time.monotonic() < deadline, f"no terminal push for {request_id}: {seen}"
        message = client.recv()
        if message["type"] == "event" and message["data"].get("request_id") == request_id:
            seen.append(message)
        elif message["type"] == "event":
            client.kept.append(message)
    return seen


def wait_for_chunks(client, count: int) -> None:
    """Read until `count` completion:chunk pushes arrived (the stream is under way)."""
    seen = 0
    while seen < count:
        message = client.recv()
        if message["event"] == "completion:chunk":
            seen += 1
        else:
            client.kept.append(message)


def terminal_of(pushes: list[dict]) -> dict:
    ends = [m for m in pushes if m["event"] in TERMINAL]
    assert len(ends) == 1, ends
    return ends[0]


@pytest.mark.daemon("inprocess")
def test_a_plain_request_answers_with_every_result_field(daemon_factory, fake_openai):
    daemon = daemon_factory(config=completion_config(fake_openai.api_base))
    with daemon.client(timeout=60) as client:
        reply = client.request("completion:request", {"prompt": "hello there", "model": "echo",
                                                      "session_id": "plain-1"})
    result = reply["data"]
    expected_text = "turn 1: you said 'hello there'"
    assert result["text"] == expected_text
    assert result["session_id"] == "plain-1" and result["request_id"]
    assert result["model"] == "openai/echo"
    assert result["usage"] == usage_for([{"role": "user", "content": "hello there"}],
                                        expected_text)
    assert "cost_usd" in result and result["attempts"] == 1 and result["duration_ms"] > 0
    assert fake_openai.calls_to("echo")[0]["stream"] is False
    log = daemon.var_dir / "logs" / "responses" / "plain-1.jsonl"
    logged = [orjson.loads(line) for line in log.read_bytes().splitlines()]
    assert [entry["text"] for entry in logged] == [expected_text]
    assert logged[0]["request_id"] == result["request_id"]


@pytest.mark.daemon("inprocess")
def test_streamed_chunks_concatenate_to_the_text_and_usage_is_reported(daemon_factory,
                                                                       fake_openai):
    daemon = daemon_factory(config=completion_config(fake_openai.api_base))
    with daemon.client(timeout=60) as client:
        request_id = start_async(client, {"prompt": "stream me a few words", "model": "echo",
                                          "stream": True}, "s-1")
        pushes = pushes_until_end(client, request_id)
        # After the end, nothing more arrives for this request: the next thing is our reply.
        assert client.request("system:health")["data"]["status"] == "healthy"
    assert all(m["correlation_id"] == "s-1" for m in pushes)
    chunks = [m["data"] for m in pushes if m["event"] == "completion:chunk"]
    result = terminal_of(pushes)
    assert result["event"] == "completion:result"
    text = result["data"]["text"]
    assert text == "turn 1: you said 'stream me a few words'"
    assert len(chunks) > 3
    assert [c["index"] for c in chunks] == list(range(len(chunks)))
    assert "".join(c["delta"] for c in chunks) == text
    assert result["data"]["usage"] == usage_for(
        [{"role": "user", "content": "stream me a few words"}], text)
    assert [m["data"]["status"] for m in pushes if m["event"] == "completion:progress"] == \
        ["queued", "processing"]
    assert fake_openai.calls_to("echo")[0]["stream"] is True


@pytest.mark.daemon("inprocess")
def test_a_second_turn_sees_the_first(daemon_factory, fake_openai):
    daemon = daemon_factory(config=completion_config(fake_openai.api_base))
    with daemon.client(timeout=60) as client:
        first = client.request("completion:request", {"prompt": "my name is Ada",
                                                      "model": "echo", "session_id": "talk"})
        second = client.request("completion:request", {"prompt": "what is my name?",
                                                       "model": "echo", "session_id": "talk"})
        other = client.request("completion:request", {"prompt": "fresh start",
                                                      "model": "echo", "session_id": "other"})
    assert first["data"]["text"] == "turn 1: you said 'my name is Ada'"
    assert second["data"]["text"] == "turn 2: you said 'what is my name?' after 'my name is Ada'"
    assert other["data"]["text"] == "turn 1: you said 'fresh start'"
    sent = fake_openai.calls_to("echo")[1]["messages"]
    assert sent == [{"role": "user", "content": "my name is Ada"},
                    {"role": "assistant", "content": first["data"]["text"]},
                    {"role": "user", "content": "what is my name?"}]


@pytest.mark.daemon("inprocess")
def test_a_system_prompt_sent_with_every_turn_reaches_the_model_once_and_first(
        daemon_factory, fake_openai):
    # As the agent plugin does: the system prompt is messages[0] of every turn's request.
    daemon = daemon_factory(config=completion_config(fake_openai.api_base))
    system = {"role": "system", "content": "You are a terse pirate."}
    answers = []
    with daemon.client(timeout=60) as client:
        for prompt in ("ahoy", "where is the gold?", "and the map?"):
            reply = client.request("completion:request", {
                "messages": [system, {"role": "user", "content": prompt}],
                "model": "echo", "session_id": "pirate"})
            answers.append(reply["data"]["text"])
    calls = fake_openai.calls_to("echo")
    assert len(calls) == 3
    for call in calls:
        assert [m["role"] for m in call["messages"]].count("system") == 1
        assert call["messages"][0] == system
    assert calls[2]["messages"] == [
        system, {"role": "user", "content": "ahoy"},
        {"role": "assistant", "content": answers[0]},
        {"role": "user", "content": "where is the gold?"},
        {"role": "assistant", "content": answers[1]},
        {"role": "user", "content": "and the map?"}]


@pytest.mark.daemon("inprocess")
def test_twenty_concurrent_requests_over_four_sessions_keep_each_sessions_order(
        daemon_factory, fake_openai):
    daemon = daemon_factory(config=completion_config(fake_openai.api_base))
    sessions = [f"sess{n}" for n in range(4)]
    with daemon.client(timeout=60) as client:
        ids = {}
        for i in range(20):
            session = sessions[i % 4]
            prompt = f"{session}-turn{i // 4}"
            ids[start_async(client, {"prompt": prompt, "model": "jitter",
                                     "session_id": session, "stream": i % 2 == 0},
                            f"c{i}")] = prompt
        results = {}
        for request_id in ids:
            end = terminal_of(pushes_until_end(client, request_id, timeout=60))
            assert end["event"] == "completion:result", end
            results[ids[request_id]] = end["data"]["text"]
    for session in sessions:
        prompts = [f"{session}-turn{k}" for k in range(5)]
        calls = [c for c in fake_openai.calls_to("jitter")
                 if c["messages"][0]["content"] == prompts[0]]
        assert len(calls) == 5
        for k, call in enumerate(calls):
            said = [m["content"] for m in call["messages"] if m["role"] == "user"]
            assert said == prompts[:k + 1]  # turn k saw exactly the turns before it, in order
            assert results[prompts[k]] == echo_text(call["messages"])


@pytest.mark.daemon("inprocess")
def test_cancel_stops_a_stream_and_a_queued_request(daemon_factory, fake_openai):
    daemon = daemon_factory(config=completion_config(fake_openai.api_base, max_concurrent=1))
    with daemon.client(timeout=60) as client:
        streaming = start_async(client, {"prompt": "go on", "model": "slow", "stream": True,
                                         "session_id": "a"}, "slow-1")
        queued = start_async(client, {"prompt": "never", "model": "echo", "session_id": "b"},
                             "queued-1")
        wait_for_chunks(client, 2)
        status = ask(client, "completion:status", {"request_id": queued})["data"]
        assert status["status"] == "queued"
        assert ask(client, "completion:cancel", {"request_id": queued})["data"]["status"] \
            == "cancelled"
        assert ask(client, "completion:cancel", {"request_id": streaming})["data"]["status"] \
            == "cancelled"
        assert terminal_of(pushes_until_end(client, queued))["event"] == "completion:cancelled"
        streamed = pushes_until_end(client, streaming)
        assert terminal_of(streamed)["event"] == "completion:cancelled"
        assert streamed[-1]["event"] == "completion:cancelled"  # no chunk after the end
        assert ask(client, "completion:cancel", {"request_id": streaming})["data"]["status"] \
            == "finished"
        assert ask(client, "completion:cancel", {"request_id": "nope"})["data"]["status"] \
            == "not_found"
        # The slot is free again: a new request runs.
        again = ask(client, "completion:request", {"prompt": "after", "model": "echo"})
        assert again["data"]["text"] == "turn 1: you said 'after'"
    assert fake_openai.calls_to("echo")[0]["messages"][-1]["content"] == "after"
    deadline = time.monotonic() + 10
    while fake_openai.disconnects == 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert fake_openai.disconnects >= 1  # the stream's connection was really dropped


def test_a_stream_left_mid_answer_hangs_up_at_once_even_while_its_frames_live(fake_openai):
    """A call that stops reading mid-answer closes its stream itself. Here the consumer of the
    deltas fails while the stream waits suspended between two chunks (where a cancellation
    can also land, inside litellm's own awaits); the error, kept below, keeps the call's frames
    and so the stream alive: unless the call hangs up, the provider goes on generating."""
    import asyncio

    import litellm

    from ksi_daemon.plugins.completion.calls import call_model

    def consume(_text: str) -> None:
        raise RuntimeError("the consumer of the deltas failed")

    async def leave_after_the_first_words() -> int:
        # `failure` holds the error, its traceback and so the call's frames until this returns
        with pytest.raises(RuntimeError) as failure:
            await call_model(litellm, "openai/slow", [{"role": "user", "content": "count"}],
                             {"api_base": fake_openai.api_base, "api_key": "sk-test"}, 30.0,
                             "s", on_delta=consume)
        deadline = time.monotonic() + 5
        while fake_openai.disconnects == 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)  # the loop runs: a scheduled close would happen here
        assert "consumer of the deltas" in str(failure.value)  # the call failed as it should
        return fake_openai.disconnects

    assert asyncio.run(leave_after_the_first_words()) >= 1


@pytest.mark.daemon("inprocess")
def test_a_request_past_its_timeout_ends_with_a_timeout_error(daemon_factory, fake_openai):
    daemon = daemon_factory(config=completion_config(fake_openai.api_base))
    with daemon.client(timeout=60) as client:
        reply = client.request("completion:request", {"prompt": "anyone?", "model": "hang",
                                                      "timeout_s": 1.5})
        assert reply["error"]["code"] == "timeout"
        request_id = start_async(client, {"prompt": "anyone?", "model": "hang",
                                          "timeout_s": 1.5}, "t-2")
        end = terminal_of(pushes_until_end(client, request_id))
        assert end["event"] == "completion:error" and end["data"]["error"]["code"] == "timeout"
        assert client.request("system:health")["data"]["status"] == "healthy"


@pytest.mark.daemon("inprocess")
def test_a_429_with_retry_after_is_retried_then_succeeds(daemon_factory, fake_openai):
    daemon = daemon_factory(config=completion_config(fake_openai.api_base))
    with daemon.client(timeout=60) as client:
        request_id = start_async(client, {"prompt": "busy?", "model": "ratelimited-a"}, "r-1")
        pushes = pushes_until_end(client, request_id)
    retries = [m["data"] for m in pushes if m["event"] == "completion:retry"]
    assert len(retries) == 1
    assert retries[0]["attempt"] == 2 and retries[0]["delay_s"] == 1.0
    assert "429" in retries[0]["reason"] and retries[0]["request_id"] == request_id
    end = terminal_of(pushes)
    assert end["event"] == "completion:result" and end["data"]["attempts"] == 2
    assert end["data"]["text"] == "turn 1: you said 'busy?'"
    calls = fake_openai.calls_to("ratelimited-a")
    assert len(calls) == 2 and calls[1]["time"] - calls[0]["time"] >= 0.95


@pytest.mark.daemon("inprocess")
def test_a_500_is_retried_then_ends_in_an_error(daemon_factory, fake_openai):
    daemon = daemon_factory(config=completion_config(fake_openai.api_base))
    with daemon.client(timeout=60) as client:
        request_id = start_async(client, {"prompt": "work?", "model": "broken-a"}, "b-1")
        pushes = pushes_until_end(client, request_id)
        reply = client.request("completion:request", {"prompt": "work?", "model": "broken-a"})
    retries = [m["data"] for m in pushes if m["event"] == "completion:retry"]
    assert [r["attempt"] for r in retries] == [2, 3]
    assert all("500" in r["reason"] and r["delay_s"] > 0 for r in retries)
    end = terminal_of(pushes)
    assert end["event"] == "completion:error"
    assert end["data"]["error"]["code"] == "unavailable"
    assert "broken on purpose" in end["data"]["error"]["message"]
    assert reply["error"]["code"] == "unavailable"
    assert len(fake_openai.calls_to("broken-a")) == 6


@pytest.mark.daemon("inprocess")
def test_an_unknown_model_is_answered_clearly(daemon_factory, fake_openai):
    daemon = daemon_factory(config=completion_config(fake_openai.api_base))
    with daemon.client(timeout=60) as client:
        # The first request may arrive before litellm is loaded; the answer is the same.
        for _ in range(2):
            reply = client.request("completion:request", {"prompt": "hi",
                                                          "model": "no-such-model-xyz"})
            assert reply["error"]["code"] == "not_found"
            assert "no-such-model-xyz" in reply["error"]["message"]
        missing = client.request("completion:request", {"model": "echo"})
        assert missing["error"]["code"] == "validation_error"
        models = client.request("completion:models")["data"]
        assert "echo" in models["aliases"] and models["default_model"] == "ksi-offline/default"
        assert "api_key" not in models["aliases"]["echo"]
        assert client.request("completion:request", {"prompt": "ok", "model": "echo"})[
            "data"]["text"] == "turn 1: you said 'ok'"


def test_the_offline_default_model_works_without_network_or_key(daemon_factory):
    blocked = {"HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9",
               "OPENAI_API_KEY": "", "ANTHROPIC_API_KEY": ""}
    daemon = daemon_factory(env=blocked)
    with daemon.client(timeout=60) as client:
        first = client.request("completion:request", {
            "prompt": "Explain quantum entanglement briefly?", "session_id": "q"})["data"]
        request_id = start_async(client, {"prompt": "How does decoherence matter?",
                                          "session_id": "q", "stream": True}, "o-2")
        pushes = pushes_until_end(client, request_id)
        again = client.request("completion:request", {
            "prompt": "Explain quantum entanglement briefly?", "session_id": "q2"})["data"]
    assert first["model"] == "ksi-offline/default" and first["cost_usd"] == 0.0
    assert "entanglement" in first["text"] and "quantum" in first["text"]
    assert first["usage"]["total_tokens"] > 0
    second = terminal_of(pushes)["data"]
    chunks = [m["data"]["delta"] for m in pushes if m["event"] == "completion:chunk"]
    assert "".join(chunks) == second["text"] and len(chunks) > 1
    assert "decoherence" in second["text"]
    assert "turn 2" in second["text"] and "entanglement" in second["text"]
    assert again["text"] == first["text"]  # deterministic
    assert second["text"] != first["text"]


@pytest.mark.daemon("inprocess")
def test_the_offline_model_answers_what_another_speaker_said_not_its_own_stock_phrases(
        daemon_factory):
    daemon = daemon_factory()
    system = {"role": "system", "content": "You are a geologist; granite is your favourite."}

    def answer(session: str, text: str) -> str:
        reply = client.request("completion:request", {
            "messages": [system, {"role": "user", "content": text}], "session_id": session})
        return reply["data"]["text"]

    def own_words(reply: str) -> str:  # the reply without its note and its quote of the prompt
        return reply.split(") ", 1)[1].split(' You said: "')[0].lower()

    with daemon.client(timeout=60) as client:
        earlier = answer("a", "Tell me about lighthouses")
        # Another agent answers, quoting that reply: its own words come first, and the system
        # prompt's (granite) after them; none of the offline reply's stock phrases.
        quoting = f"Granite quarries outlast everything. Earlier you said: {earlier}"
        reply = answer("b", quoting)
        again = answer("c", quoting)
        # An offline reply alone, as in a debate: it is about what that reply was about.
        to_reply = answer("d", earlier)
    assert earlier.startswith("(Answering as instructed: You are a geologist")
    assert "quarries" in own_words(reply) and "outlast" in own_words(reply)
    for stock in ("instructed", "answering", "heart", "conversation", "granite", "lighthouses"):
        assert stock not in own_words(reply), (stock, reply)
    assert again == reply  # deterministic
    assert "lighthouses" in own_words(to_reply)
    for stock in ("instructed", "answering", "heart", "conversation", "geologist"):
        assert stock not in own_words(to_reply), (stock, to_reply)


def test_requests_sent_before_litellm_is_loaded_wait_for_it(daemon_factory, fake_openai):
    daemon = daemon_factory(config={"plugins": {"completion": {"aliases": {"echo": {
        "model": "openai/echo", "api_base": fake_openai.api_base, "api_key": "sk-test"}}}}})
    with daemon.client(timeout=60) as client:
        # litellm takes seconds to import (here: at the first call that needs it); the socket
        # answers at once.
        assert client.request("completion:status")["data"]["litellm_ready"] is False
        # The offline model runs without litellm: a daemon that only talks to it never loads it.
        reply = client.request("completion:request", {"prompt": "are you there?"})
        assert reply["data"]["text"] and reply["data"]["model"] == "ksi-offline/default"
        assert client.request("completion:status")["data"]["litellm_ready"] is False
        reply = client.request("completion:request", {"prompt": "are you there?",
                                                      "model": "echo"})
        assert reply["data"]["text"] and reply["data"]["model"] == "openai/echo"
        assert client.request("completion:status")["data"]["litellm_ready"] is True


@pytest.mark.daemon("inprocess")
def test_turns_are_stored_in_the_conversation_store_or_kept_in_memory_without_it(
        daemon_factory):
    with_store = daemon_factory(subdir="store")
    without = daemon_factory(config={"plugins": {"conversation": {"enabled": False}}},
                             subdir="memory")
    for daemon in (with_store, without):
        with daemon.client(timeout=60) as client:
            client.request("completion:request", {"prompt": "remember pelicans",
                                                  "session_id": "kept"})
            second = client.request("completion:request", {"prompt": "what animal?",
                                                            "session_id": "kept"})["data"]
            assert "turn 2" in second["text"] and "pelicans" in second["text"]
            if daemon is with_store:
                # The answer is sent before its turn is committed; the commit follows at once.
                deadline = time.monotonic() + 5
                while True:
                    history = client.request("conversation:history",
                                             {"session_id": "kept", "limit": 10})["data"]
                    if len(history["messages"]) >= 4 or time.monotonic() > deadline:
                        break
                    time.sleep(0.05)
                assert [m["role"] for m in history["messages"]] == \
                    ["user", "assistant", "user", "assistant"]
                assert history["messages"][3]["content"] == second["text"]
    assert "conversation_store_missing" in without.read_output()
    assert "conversation_store_missing" not in with_store.read_output()


def test_shutdown_lets_running_completions_finish_and_checkpoints_the_rest(
        daemon_factory, fake_openai):
    config = completion_config(fake_openai.api_base)
    # The held call is released as the shutdown is acknowledged: it has these 2 s to answer.
    config["daemon"] = {"shutdown_timeout": 2}
    daemon = daemon_factory(config=config)
    nearly_done = fake_openai.hold("held")
    with daemon.client(timeout=60) as client:
        client.request("completion:request", {"prompt": "warm up", "model": "echo"})
        finishing = start_async(client, {"prompt": "nearly done", "model": "held"}, "p-1")
        stuck = start_async(client, {"prompt": "never done", "model": "hang"}, "h-1")
        nearly_done.wait_reached()
        assert data_of(ask(client, "system:shutdown")) == {"status": "shutting_down"}
        nearly_done.release()
        assert terminal_of(pushes_until_end(client, finishing))["event"] == "completion:result"
        # The hung call is not ended: it is kept for the next start, and the requester is told.
        told, earlier = [], list(getattr(client, "kept", []))
        while not told:
            message = earlier.pop(0) if earlier else client.recv()
            if message["type"] == "event" and message["data"].get("request_id") == stuck:
                assert message["event"] not in TERMINAL, message
                if message["data"].get("status") == "checkpointed":
                    told.append(message)
        assert told[0]["event"] == "completion:progress"
    assert daemon.wait(30) == 0


def test_a_daemon_that_served_completions_exits_on_sigterm_without_waiting_out_the_deadline(
        daemon_factory, fake_openai):
    config = completion_config(fake_openai.api_base)
    config["daemon"] = {"shutdown_timeout": 30}
    daemon = daemon_factory(config=config)
    with daemon.client(timeout=60) as client:
        for prompt in ("one", "two"):
            assert client.request("completion:request", {"prompt": prompt})["data"]["text"]
            assert client.request("completion:request", {"prompt": prompt,
                                                         "model": "echo"})["data"]["text"]
        streamed = start_async(client, {"prompt": "three", "model": "echo", "stream": True},
                               "st-1")
        assert terminal_of(pushes_until_end(client, streamed))["event"] == "completion:result"
    # Nothing is in flight: stopping must not wait for the 30 s deadline (or anything like it).
    assert daemon.stop(signal.SIGTERM, timeout=15) == 0
    assert "daemon_stopped" in daemon.read_output()
    assert "exiting_past_stuck_tasks" not in daemon.read_output()

HOOK_PLUGIN = '''
from ksi_daemon.plugin_base import hookimpl


@hookimpl
def ksi_completion_pre_call(context):
    context.messages[-1]["content"] = context.messages[-1]["content"].upper()


@hookimpl
async def ksi_completion_post_response(context):
    context.annotations["words"] = len(context.text.split())
    context.annotations["model_seen"] = context.model
'''


@pytest.mark.daemon("inprocess")
def test_completion_hooks_change_the_call_and_annotate_the_result(daemon_factory, fake_openai,
                                                                  workdir):
    plugins = workdir / "plugins"
    plugins.mkdir()
    (plugins / "shouting.py").write_text(HOOK_PLUGIN)
    config = completion_config(fake_openai.api_base)
    config["daemon"] = {"plugin_dirs": [str(plugins)]}
    daemon = daemon_factory(config=config)
    with daemon.client(timeout=60) as client:
        result = client.request("completion:request", {"prompt": "quiet please",
                                                       "model": "echo"})["data"]
    assert result["text"] == "turn 1: you said 'QUIET PLEASE'"
    assert result["annotations"] == {"words": 6, "model_seen": "openai/echo"}


@pytest.mark.daemon("inprocess")
def test_priority_orders_the_queue(daemon_factory, fake_openai):
    daemon = daemon_factory(config=completion_config(fake_openai.api_base, max_concurrent=1))
    first = fake_openai.hold("held")
    with daemon.client(timeout=60) as client:
        ids = [start_async(client, {"prompt": "first", "model": "held"}, "first")]
        while not any(m["event"] == "completion:progress" and m["data"]["status"] == "processing"
                      for m in client.kept):
            client.kept.append(client.recv())
        # The only slot is taken: both wait, and the higher priority goes first though it came last.
        ids.append(start_async(client, {"prompt": "low", "model": "jitter"}, "low"))
        ids.append(start_async(client, {"prompt": "high", "model": "jitter", "priority": 5},
                               "high"))
        first.release()
        for request_id in ids:
            assert terminal_of(pushes_until_end(client, request_id))["event"] == \
                "completion:result"
    order = [c["messages"][-1]["content"] for c in fake_openai.requests]
    assert order == ["first", "high", "low"]


# ---- claude-cli/<model> through the real `claude` tool -----------------------------------------

def claude_binary() -> Path:
    """Install @anthropic-ai/claude-code once (cached), or skip saying why it cannot be."""
    binary = CLAUDE_CODE_DIR / "node_modules" / ".bin" / "claude"
    if binary.exists():
        return binary
    CLAUDE_CODE_DIR.mkdir(parents=True, exist_ok=True)
    with open(CLAUDE_CODE_DIR / ".install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another pytest-xdist worker may be installing it
        if binary.exists():
            return binary
        return _install_claude_code(binary)


def _install_claude_code(binary: Path) -> Path:
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        pytest.skip("node/npm are not installed, so the claude tool cannot be installed")
    try:
        done = subprocess.run(
            [npm, "install", "--no-audit", "--no-fund", "--prefix", str(CLAUDE_CODE_DIR),
             f"@anthropic-ai/claude-code@{CLAUDE_CODE_VERSION}"],
            capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired:
        pytest.skip("npm install @anthropic-ai/claude-code timed out: registry unreachable")
    if done.returncode != 0 or not binary.exists():
        output = (done.stderr or done.stdout)[-400:]
        if any(s in output for s in ("ENOTFOUND", "EAI_AGAIN", "ECONNREFUSED", "ETIMEDOUT",
                                     "network")):
            pytest.skip(f"npm registry unreachable: {output}")
        raise AssertionError(f"npm install failed: {output}")
    return binary


def claude_env(api_base_url: str) -> dict:
    """The environment a test's `claude` runs in: the fake API, a fake key, nothing sent out."""
    return {"ANTHROPIC_BASE_URL": api_base_url, "ANTHROPIC_API_KEY": "sk-ant-fake",
            "DISABLE_TELEMETRY": "1", "DISABLE_AUTOUPDATER": "1",
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1"}


@pytest.fixture
def claude_daemon(daemon_factory):
    binary = claude_binary()
    with FakeAnthropicServer() as api:
        env = claude_env(api.base_url)
        config = {"plugins": {"completion": {
            "aliases": {"sonnet": "claude-cli/sonnet"},
            "claude_cli": {"binary": str(binary), "timeout_s": 60}}}}
        yield daemon_factory(config=config, env=env), api


def test_claude_cli_runs_the_real_tool_and_resumes_its_session(claude_daemon):
    daemon, api = claude_daemon
    with daemon.client(timeout=90) as client:
        first = client.request("completion:request", {
            "prompt": "Hello from KSI", "model": "claude-cli/sonnet", "session_id": "cl"})
        assert "error" not in first, first
        request_id = start_async(client, {"prompt": "Second turn", "model": "sonnet",
                                          "session_id": "cl", "stream": True}, "cl-2")
        pushes = pushes_until_end(client, request_id, timeout=90)
    first = first["data"]
    assert first["text"] == "claude-fake heard: Hello from KSI"
    assert first["model"] == "claude-cli/sonnet"
    assert first["usage"]["completion_tokens"] == 5 and first["usage"]["prompt_tokens"] >= 11
    assert first["cost_usd"] is not None and first["cost_usd"] > 0
    second = terminal_of(pushes)
    assert second["event"] == "completion:result", second
    chunks = [m["data"]["delta"] for m in pushes if m["event"] == "completion:chunk"]
    assert "".join(chunks) == second["data"]["text"] == "claude-fake heard: Second turn"
    assert len(chunks) > 1
    # --resume really continued the tool's own session: the API saw the first exchange again.
    resumed = [r for r in api.requests
               if "Second turn" in orjson.dumps(r.get("messages")).decode()]
    assert resumed and "claude-fake heard: Hello from KSI" in orjson.dumps(
        resumed[-1]["messages"]).decode()
    # Only the new message was passed as the prompt, not a transcript of the old one.
    assert "Conversation so far" not in orjson.dumps(resumed[-1]["messages"]).decode()


def test_claude_cli_failure_carries_stderr_into_the_error(daemon_factory, inprocess_factory,
                                                          workdir):
    binary = claude_binary()
    # CLAUDE_CODE_MAX_RETRIES: the tool's own retries of a refused API take ~25 s
    env = {**claude_env("http://127.0.0.1:9"), "CLAUDE_CODE_MAX_RETRIES": "0"}
    config = {"plugins": {"completion": {"claude_cli": {"binary": str(binary),
                                                        "timeout_s": 20},
                                         "retry": {"max_attempts": 1}}}}
    daemon = daemon_factory(config=config, env=env)
    with daemon.client(timeout=90) as client:
        reply = client.request("completion:request", {"prompt": "anyone?",
                                                      "model": "claude-cli/sonnet",
                                                      "timeout_s": 60})
        # A missing tool needs no environment of its own: an in-process daemon.
        missing = inprocess_factory(
            config={"plugins": {"completion": {"claude_cli": {
                "binary": str(workdir / "no-claude-here")}}}}, subdir="second")
    assert "error" in reply, reply
    assert "claude" in reply["error"]["message"]
    with missing.client(timeout=60) as client:
        reply = client.request("completion:request", {"prompt": "x",
                                                      "model": "claude-cli/sonnet"})
    assert reply["error"]["code"] == "not_found"
    assert "not found" in reply["error"]["message"]


# ---- the Python client --------------------------------------------------------------------------

@pytest.mark.daemon("inprocess")
async def test_async_client_creates_and_streams_completions(daemon_factory):
    from ksi_client import AsyncClient, EventClient, KSIError

    daemon = daemon_factory()
    async with AsyncClient(daemon.socket_path, timeout=60) as client:
        response = await client.create_completion("Explain quantum computing",
                                                  session_id="client-1")
        assert response.session_id == "client-1"
        assert "quantum" in response.text and response.usage["total_tokens"] > 0
        deltas = [d async for d in client.stream_completion("And entanglement?",
                                                            session_id="client-1")]
        assert len(deltas) > 1
        assert "".join(deltas) == client.last_response.text
        assert "turn 2" in client.last_response.text
        with pytest.raises(KSIError) as failure:
            await client.create_completion("hi", model="no-such-model-xyz")
        assert failure.value.code == "not_found"
        assert isinstance(client, EventClient)


def test_cancelling_a_claude_cli_completion_kills_the_tool(claude_daemon):
    daemon, api = claude_daemon
    # node rewrites the tool's command line, so find it by the fake API address in its
    # environment, which is unique to this test.
    marker = f"ANTHROPIC_BASE_URL={api.base_url}\0"
    with daemon.client(timeout=90) as client:
        request_id = start_async(client, {"prompt": "take your time", "model": "claude-cli/sonnet",
                                          "stream": True}, "cc-1")
        wait_for_chunks(client, 2)
        assert running_with(marker), "the claude process should be running mid-stream"
        assert ask(client, "completion:cancel", {"request_id": request_id})["data"]["status"] \
            == "cancelled"
        assert terminal_of(pushes_until_end(client, request_id))["event"] == \
            "completion:cancelled"
    deadline = time.monotonic() + 5  # left alone, the tool would stream for 20 s
    while running_with(marker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not running_with(marker)


def running_with(text: str) -> list[int]:
    """Claude processes whose environment contains `text` (read from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if b"python" not in (entry / "cmdline").read_bytes() and \
                        text.encode() in (entry / "environ").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def test_a_claude_cli_run_past_its_hard_deadline_is_killed(daemon_factory):
    binary = claude_binary()
    with FakeAnthropicServer() as api:
        env = claude_env(api.base_url)
        config = {"plugins": {"completion": {"claude_cli": {"binary": str(binary),
                                                            "timeout_s": 3},
                                             "retry": {"max_attempts": 1}}}}
        daemon = daemon_factory(config=config, env=env)
        marker = f"ANTHROPIC_BASE_URL={api.base_url}\0"
        with daemon.client(timeout=90) as client:
            reply = client.request("completion:request", {"prompt": "take your time",
                                                          "model": "claude-cli/sonnet"})
        assert reply["error"]["code"] == "timeout", reply
        assert "killed" in reply["error"]["message"]
        assert not running_with(marker)
