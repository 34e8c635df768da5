"""AsyncClient and SyncClient helpers against a real daemon over its real socket.

Completions use the built-in offline model, or tests/fake_openai_server.py for a slow stream and
a hung upstream; the seed examples use the real `claude` tool against tests/fake_anthropic_server.
"""
from __future__ import annotations

import ast
import asyncio
import contextlib
import inspect
import io
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import ROOT, TEST_ENV
from fake_openai_server import FakeOpenAIServer
from ksi_client import (AsyncClient, Event, EventClient, EventStream, KSIConflictError,
                        KSIConnectionError, KSIError, KSINotFoundError, KSITimeoutError,
                        KSIUnknownEventError, KSIValidationError, SyncClient, SyncEventStream)
from ksi_client.async_client import helper_names
from test_completion import claude_daemon  # noqa: F401 - the fixture, shared
from test_docs import seed_code_block

WAIT_S = 10  # a bound for waits that succeed in milliseconds; only reached when broken


# The daemon runs in this process behind its real Unix socket (tests/inprocess.py), so litellm
# is imported once, not by every daemon; the claude tool's test keeps a process (the tool gets
# its environment from the daemon process).
pytestmark = pytest.mark.daemon("inprocess")


@pytest.fixture
def fake_openai():
    with FakeOpenAIServer() as server:
        yield server


@pytest.fixture
def model_daemon(daemon_factory, fake_openai):
    """A daemon whose `slow` model streams a word every 0.2 s and whose `hang` never answers."""
    aliases = {name: {"model": f"openai/{name}", "api_base": fake_openai.api_base,
                      "api_key": "sk-test"} for name in ("slow", "hang")}
    config = {"plugins": {"completion": {"aliases": aliases, "retry": {"max_attempts": 1}}}}
    return daemon_factory(config=config)


async def stored(client: AsyncClient, session_id: str, messages: int) -> dict:
    """The conversation once its `messages` turns are stored: an answer is sent before its
    turns are committed (docs/COMPLETION.md), so a read right after it may miss them."""
    async def complete():
        try:
            return (await client.conversation(session_id))["total"] >= messages
        except KSINotFoundError:
            return False
    await wait_until(complete, f"{messages} stored messages in {session_id}")
    return await client.conversation(session_id)


async def wait_until(condition, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


# ---- health and completions -----------------------------------------------------------------

async def test_health_reports_the_daemon_it_talks_to(daemon):
    async with AsyncClient(daemon.socket_path) as client:
        health = await client.health()
    assert health["status"] == "healthy"
    assert health["pid"] == daemon.proc.pid
    assert health["plugins"]["failed"] == 0 and health["connections"] == 1


async def test_completions_continue_their_session_and_stream_the_same_text(daemon):
    async with AsyncClient(daemon.socket_path, timeout=60) as client:
        first = await client.create_completion("Tell me about lighthouses", session_id="helpers")
        deltas = [delta async for delta in
                  client.stream_completion("How do their lenses work?", session_id="helpers")]
    assert first.session_id == "helpers" and "lighthouses" in first.text
    assert first.usage["total_tokens"] > 0 and first.request_id
    assert len(deltas) > 1
    second = client.last_response
    assert "".join(deltas) == second.text
    assert second.session_id == "helpers"
    assert "This is turn 2" in second.text and "Tell me about lighthouses" in second.text


async def test_leaving_a_stream_early_cancels_the_completion_upstream(model_daemon, fake_openai):
    async with AsyncClient(model_daemon.socket_path, timeout=60) as client:
        stream = client.stream_completion("count slowly", model="slow")
        assert (await anext(stream)).startswith("word0")
        await stream.aclose()
        assert client.last_response is None

        async def nothing_running():
            status = await client.emit("completion:status")
            return status["processing"] == 0 and status["queued"] == 0
        await wait_until(nothing_running, "the cancelled completion to end")

        async def upstream_dropped():
            return fake_openai.disconnects >= 1
        await wait_until(upstream_dropped, "the fake server to see the stream dropped")


async def test_cancel_completion_answers_for_running_finished_and_unknown_requests(
        model_daemon):
    async with AsyncClient(model_daemon.socket_path, timeout=60) as client:
        accepted = await client.emit("completion:async", {"prompt": "x", "model": "slow"})
        assert await client.cancel_completion(accepted["request_id"]) == "cancelled"
        done = await client.create_completion("a finished one")
        assert await client.cancel_completion(done.request_id) == "finished"
        assert await client.cancel_completion("no-such-request") == "not_found"


async def test_a_hung_upstream_is_a_timeout_error_for_both_helpers(model_daemon):
    async with AsyncClient(model_daemon.socket_path, timeout=60) as client:
        with pytest.raises(KSITimeoutError) as caught:
            await client.create_completion("anyone?", model="hang", timeout_s=0.5)
        assert caught.value.code == "timeout"
        with pytest.raises(KSITimeoutError):
            async for _ in client.stream_completion("anyone?", model="hang", timeout_s=0.5):
                pass
        with pytest.raises(KSINotFoundError):
            await client.create_completion("hi", model="no-such-model-xyz")
        assert (await client.health())["status"] == "healthy"


async def test_concurrent_helpers_on_one_connection_each_get_their_own_answer(daemon):
    topics = ["volcanoes", "glaciers", "coral", "deserts", "rainforests", "tundra",
              "estuaries", "savannas"]
    async with AsyncClient(daemon.socket_path, timeout=60) as client:
        answers = await asyncio.gather(
            *(client.create_completion(f"Describe {topic}", session_id=f"par-{topic}")
              for topic in topics),
            *(client.set_state(f"k{i}", i, namespace="par") for i in range(40)))
        values = await asyncio.gather(*(client.get_state(f"k{i}", namespace="par")
                                        for i in range(40)))
    for topic, answer in zip(topics, answers[:len(topics)]):
        assert answer.session_id == f"par-{topic}"
        assert topic in answer.text
    assert answers[len(topics):] == [1] * 40
    assert values == list(range(40))


# ---- state ----------------------------------------------------------------------------------

async def test_state_helpers_round_trip_values_with_their_types(daemon):
    async with AsyncClient(daemon.socket_path) as client:
        assert await client.set_state("count", "123", namespace="demo") == 1
        assert await client.set_state("count", "124", namespace="demo") == 2
        await client.set_state("config", {"depth": [1, 2.5, None, True]}, namespace="demo")
        await client.set_state("other", 1)
        assert await client.get_state("count", namespace="demo") == "124"
        assert await client.get_state("config", namespace="demo") == \
            {"depth": [1, 2.5, None, True]}
        assert await client.get_state("missing", namespace="demo") is None
        assert await client.get_state("missing", "fallback", namespace="demo") == "fallback"
        assert await client.list_state(namespace="demo") == ["config", "count"]
        assert await client.list_state(namespace="demo", prefix="co", limit=1) == ["config"]
        assert await client.delete_state("count", namespace="demo") is True
        assert await client.delete_state("count", namespace="demo") is False
        assert await client.list_state(namespace="demo") == ["config"]
        assert await client.list_state() == ["other"]
    async with AsyncClient(daemon.socket_path) as again:  # committed, seen by anyone
        assert await again.get_state("config", namespace="demo") == \
            {"depth": [1, 2.5, None, True]}


async def test_state_errors_arrive_as_their_types(daemon):
    async with AsyncClient(daemon.socket_path) as client:
        assert await client.set_state("lock", "mine", if_version=0) == 1
        with pytest.raises(KSIConflictError):
            await client.set_state("lock", "yours", if_version=0)
        with pytest.raises(KSIValidationError) as caught:
            await client.set_state("", 1)
        assert caught.value.details[0]["loc"] == ["key"]
        with pytest.raises(KSIError) as caught:
            await client.set_state("big", "x" * (2 * 1024 * 1024))
        assert caught.value.code == "payload_too_large"
        assert await client.get_state("lock") == "mine"  # the connection is still fine


# ---- topics ---------------------------------------------------------------------------------

async def test_topic_streams_each_get_their_own_topics(daemon):
    async with AsyncClient(daemon.socket_path) as reader, \
            AsyncClient(daemon.socket_path) as writer:
        rooms = await reader.subscribe_topic("room:*")
        alerts = await reader.subscribe_topic("alerts")
        assert isinstance(rooms, EventStream)
        sent = await writer.publish("room:lobby", {"text": "hello"}, sender="ada")
        await writer.publish("alerts", "disk full")
        await writer.publish("elsewhere", "nobody listens")
        assert sent["delivered"] == 1 and sent["message_id"]
        message = await rooms.get(timeout=WAIT_S)
        assert (message.event, message.data["topic"], message.data["sender"],
                message.data["content"]) == ("message:received", "room:lobby", "ada",
                                             {"text": "hello"})
        assert message.data["message_id"] == sent["message_id"]
        assert (await alerts.get(timeout=WAIT_S)).data["content"] == "disk full"
        with pytest.raises(KSITimeoutError):
            await rooms.get(timeout=0.1)  # "alerts" and "elsewhere" were not for this stream
        assert await reader.unsubscribe_topic("room:*", "never-joined") == ["room:*"]
        assert (await writer.publish("room:lobby", "gone"))["delivered"] == 0
        assert (await writer.publish("alerts", "still here"))["delivered"] == 1
        assert await reader.unsubscribe_topic() == ["alerts"]
        assert (await writer.publish("alerts", "gone too"))["delivered"] == 0
        with pytest.raises(KSIValidationError):
            await writer.publish("room:*", "a wildcard is not a topic")
        with pytest.raises(ValueError):
            await reader.subscribe_topic()


# ---- conversations --------------------------------------------------------------------------

async def test_conversation_helpers_list_read_search_and_export(daemon):
    async with AsyncClient(daemon.socket_path, timeout=60) as client:
        await client.create_completion("Tell me about narwhals", session_id="sea")
        await client.create_completion("And their tusks?", session_id="sea")
        await client.create_completion("Something about deserts", session_id="sand")
        sea = await stored(client, "sea", 4)
        await stored(client, "sand", 2)
        sessions = await client.conversations()
        page = await client.conversation("sea", limit=1, offset=1)
        hits = await client.search_conversations("narwhals")
        only_sand = await client.search_conversations("narwhals", session_id="sand")
        exported = await client.export_conversation("sea", "markdown")
        as_json = await client.export_conversation("sea", format="json")
        with pytest.raises(KSINotFoundError):
            await client.conversation("no-such-session")
        with pytest.raises(KSINotFoundError):
            await client.export_conversation("no-such-session")
        with pytest.raises(KSIValidationError):
            await client.export_conversation("sea", "pdf")
    assert [s["session_id"] for s in sessions] == ["sand", "sea"]  # most recent first
    assert {s["session_id"]: s["message_count"] for s in sessions} == {"sand": 2, "sea": 4}
    assert [m["role"] for m in sea["messages"]] == ["user", "assistant"] * 2
    assert sea["messages"][0]["content"] == "Tell me about narwhals"
    assert page["messages"][0]["content"] == sea["messages"][1]["content"]
    assert hits and all(hit["session_id"] == "sea" for hit in hits)
    assert only_sand == []
    markdown = Path(exported["path"]).read_text()
    assert exported["message_count"] == 4 and "Tell me about narwhals" in markdown
    assert as_json["path"].endswith(".json") and "And their tusks?" in \
        Path(as_json["path"]).read_text()


# ---- agents (the agent:* events of CONTRACT.md) ---------------------------------------------

async def test_agent_helpers_spawn_talk_list_and_terminate(daemon):
    async with AsyncClient(daemon.socket_path, timeout=60) as client, \
            AsyncClient(daemon.socket_path, timeout=60) as watcher:
        await watcher.subscribe("agent:*")
        lifecycle = watcher.events("agent:*")
        profiles = {profile["name"] for profile in await client.agent_profiles()}
        assert {"assistant", "teacher", "critic"} <= profiles

        agent = await client.spawn_agent("teacher", agent_id="tutor")
        assert (agent["agent_id"], agent["status"], agent["profile"]) == \
            ("tutor", "running", "teacher")
        answer = await client.send_to_agent("tutor", "Explain photosynthesis", wait=True)
        assert answer["message_id"] and answer["delivered"]
        reply = answer["reply"]
        assert reply["session_id"] == agent["session_id"]
        assert "photosynthesis" in reply["text"]

        listed = {a["agent_id"]: a for a in await client.list_agents()}
        assert listed["tutor"]["status"] == "running"
        assert listed["tutor"]["messages_handled"] >= 1
        info = await client.agent_info("tutor")
        assert info["agent_id"] == "tutor" and info["turns"] == 1
        assert "photosynthesis" in str(info["recent"])

        seen = set()
        while not {"agent:spawned", "agent:reply"} <= seen:
            event = await lifecycle.get(timeout=WAIT_S)
            if event.data.get("agent_id") == "tutor":
                seen.add(event.event)

        assert (await client.terminate_agent("tutor"))["status"] == "terminated"
        assert "tutor" not in {a["agent_id"] for a in await client.list_agents()}
        assert "tutor" in {a["agent_id"] for a in await client.list_agents("terminated")}


async def test_agent_helpers_without_waiting_and_from_an_inline_config(daemon):
    config = {"name": "terse", "model": "ksi-offline/default",
              "system_prompt": "Answer in one line.", "temperature": 0, "max_turns": 5}
    async with AsyncClient(daemon.socket_path, timeout=60) as client:
        await client.subscribe("agent:reply")
        replies = client.events("agent:reply")
        agent = await client.spawn_agent(config=config, task="Name a prime number")
        first = await replies.get(timeout=30)
        assert first.data["agent_id"] == agent["agent_id"]
        assert "prime" in first.data["text"]
        sent = await client.send_to_agent(agent["agent_id"], "And another one?",
                                          sender="client-test")
        assert sent["message_id"] and "reply" not in sent
        second = await replies.get(timeout=30)
        assert second.data["agent_id"] == agent["agent_id"]
        assert second.data["in_reply_to"] == sent["message_id"]
        await client.terminate_agent(agent["agent_id"])


async def test_agent_errors_arrive_as_their_types(daemon):
    async with AsyncClient(daemon.socket_path, timeout=60) as client:
        with pytest.raises(KSINotFoundError):
            await client.spawn_agent("no-such-profile")
        with pytest.raises(KSINotFoundError):
            await client.terminate_agent("nobody")
        with pytest.raises(KSINotFoundError):
            await client.send_to_agent("nobody", "hello?")
        await client.spawn_agent("assistant", agent_id="twin")
        with pytest.raises(KSIConflictError):
            await client.spawn_agent("assistant", agent_id="twin")
        await client.terminate_agent("twin")


# ---- errors and finding the daemon ----------------------------------------------------------

async def test_no_daemon_is_a_connection_error_naming_the_start_command(tmp_path, monkeypatch):
    monkeypatch.delenv("KSI_SOCKET_PATH", raising=False)
    monkeypatch.setenv("KSI_VAR_DIR", str(tmp_path))
    with pytest.raises(KSIConnectionError) as caught:
        async with AsyncClient() as client:
            await client.health()
    assert "no KSI daemon is listening" in str(caught.value)
    assert "./daemon_control.py start" in str(caught.value)
    with pytest.raises(KSIConnectionError, match="daemon_control.py start"):
        SyncClient().health()


async def test_unknown_events_keep_their_type_through_the_helpers_client(daemon):
    async with AsyncClient(daemon.socket_path) as client:
        with pytest.raises(KSIUnknownEventError):
            await client.emit("state:gett")
        assert isinstance(client, EventClient)


# ---- the synchronous face -------------------------------------------------------------------

def test_sync_client_mirrors_every_helper_with_the_same_signature():
    names = helper_names()
    assert {"health", "create_completion", "stream_completion", "spawn_agent",
            "terminate_agent", "list_agents", "send_to_agent", "publish", "subscribe_topic",
            "get_state", "set_state", "delete_state", "list_state", "conversations"} <= set(names)
    for name in names:
        assert inspect.signature(getattr(SyncClient, name)) == \
            inspect.signature(getattr(AsyncClient, name)), name
        assert not inspect.iscoroutinefunction(getattr(SyncClient, name)), name


def test_sync_client_runs_the_helpers_in_a_plain_script(daemon):
    with SyncClient(daemon.socket_path, timeout=60) as client, \
            SyncClient(daemon.socket_path) as other:
        assert client.health()["pid"] == daemon.proc.pid
        assert client.set_state("k", [1, "2"], namespace="sync") == 1
        assert client.get_state("k", namespace="sync") == [1, "2"]
        assert client.list_state(namespace="sync") == ["k"]
        assert client.delete_state("k", namespace="sync") is True

        answer = client.create_completion("Tell me about comets", session_id="sync")
        assert "comets" in answer.text
        stream = client.stream_completion("And their tails?", session_id="sync")
        assert inspect.isgenerator(stream)
        deltas = list(stream)
        assert "".join(deltas) == client.last_response.text
        assert "This is turn 2" in client.last_response.text
        deadline = time.monotonic() + WAIT_S
        while client.conversations()[0]["message_count"] < 4:
            assert time.monotonic() < deadline, "the turns were never stored"
            time.sleep(0.02)
        assert [s["session_id"] for s in client.conversations()] == ["sync"]
        assert client.conversation("sync")["total"] == 4

        messages = client.subscribe_topic("news")
        assert isinstance(messages, SyncEventStream)
        assert other.publish("news", "extra!")["delivered"] == 1
        event = next(messages)
        assert isinstance(event, Event) and event.data["content"] == "extra!"

        with pytest.raises(KSIConflictError):
            client.set_state("once", 1, if_version=3)
        with pytest.raises(KSINotFoundError):
            client.conversation("nope")
    with pytest.raises(KSIConnectionError, match="closed"):
        client.health()


def test_one_sync_client_serves_several_threads_at_once(daemon):
    results: dict[int, tuple] = {}

    def worker(index: int) -> None:
        version = client.set_state(f"t{index}", {"thread": index}, namespace="threads")
        answer = client.create_completion(f"Tell me about planet{index}",
                                          session_id=f"thread-{index}")
        deltas = list(client.stream_completion("And its moons?", session_id=f"thread-{index}"))
        results[index] = (version, client.get_state(f"t{index}", namespace="threads"),
                          answer.session_id, "".join(deltas))

    with SyncClient(daemon.socket_path, timeout=60) as client:
        threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert client.list_state(namespace="threads") == [f"t{i}" for i in range(6)]
    for index in range(6):
        version, value, session_id, streamed = results[index]
        assert (version, value, session_id) == (1, {"thread": index}, f"thread-{index}")
        assert "This is turn 2" in streamed and f"planet{index}" in streamed


def test_leaving_a_sync_stream_early_cancels_the_completion(model_daemon, fake_openai):
    with SyncClient(model_daemon.socket_path, timeout=60) as client:
        for delta in client.stream_completion("count slowly", model="slow"):
            assert delta.startswith("word0")
            break
        assert client.last_response is None
        deadline = time.monotonic() + WAIT_S
        while client.emit("completion:status")["processing"] > 0:
            assert time.monotonic() < deadline, "the completion was never cancelled"
            time.sleep(0.02)
        while fake_openai.disconnects < 1:
            assert time.monotonic() < deadline, "the upstream stream was never dropped"
            time.sleep(0.02)
        with pytest.raises(KSITimeoutError):
            list(client.stream_completion("anyone?", model="hang", timeout_s=0.5))
        assert client.health()["status"] == "healthy"


def test_a_ctrl_c_just_as_a_step_is_handed_over_still_cancels_the_completion(
        model_daemon, fake_openai, monkeypatch):
    # Python raises KeyboardInterrupt wherever the main thread is when it next runs: here, just
    # after the stream's next step was handed to the client's loop, before anything waits for
    # it. (interfaces/chat.py lost its cancel so, now and then, under load.)
    import ksi_client.sync_client as sync_client
    hand_over = sync_client.asyncio.run_coroutine_threadsafe

    def handed_over_then_interrupted(coroutine, loop):
        monkeypatch.undo()
        hand_over(coroutine, loop)
        raise KeyboardInterrupt

    with SyncClient(model_daemon.socket_path, timeout=60) as client:
        stream = client.stream_completion("count slowly", model="slow")
        assert next(stream).startswith("word0")
        monkeypatch.setattr(sync_client.asyncio, "run_coroutine_threadsafe",
                            handed_over_then_interrupted)
        # Held to the end, as a program handling the interrupt may hold it: the cancel must
        # not wait for the garbage collector to free the stream.
        with pytest.raises(KeyboardInterrupt) as interrupt:
            next(stream)
        deadline = time.monotonic() + WAIT_S
        while fake_openai.disconnects < 1:
            assert time.monotonic() < deadline, "the upstream stream was never dropped"
            time.sleep(0.02)
        assert client.emit("completion:status")["processing"] == 0
        assert client.last_response is None
        assert interrupt.type is KeyboardInterrupt


# ---- the seed's client examples, as written -------------------------------------------------

async def run_as_written(code: str) -> dict:
    """Run a snippet with top-level `async with`/`await` as the seed shows it; its globals."""
    flags = ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
    namespace: dict = {"__name__": "__seed__"}
    result = eval(compile(code, "<seed 003>", "exec", flags=flags), namespace)
    if inspect.isawaitable(result):
        await result
    return namespace


@pytest.mark.daemon("process")
async def test_the_seed_client_examples_run_as_written(claude_daemon, monkeypatch):
    daemon, api = claude_daemon
    monkeypatch.setenv("KSI_SOCKET_PATH", str(daemon.socket_path))
    python_client = seed_code_block("003", "### Python Client")
    event_based = seed_code_block("003", "### Event-Based Operations")
    assert "AsyncClient()" in python_client and "EventClient()" in event_based

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        await run_as_written(python_client)
    assert printed.getvalue() == "claude-fake heard: Explain quantum computing\n"

    namespace = await run_as_written(event_based)
    assert namespace["response"]["status"] in ("queued", "processing")

    async def haiku_asked():
        return any("Write a haiku about coding" in text for text in api.all_texts())
    await wait_until(haiku_asked, "the model to be asked for the haiku")


# ---- docs/CLIENT.md -------------------------------------------------------------------------

def client_doc_scripts() -> list[str]:
    text = (ROOT / "docs" / "CLIENT.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    return [block for block in blocks if "claude-cli" not in block]  # the seed's, run above


def test_every_helper_has_an_example_in_the_client_doc():
    examples = "\n".join(client_doc_scripts())
    missing = [name for name in helper_names() if f".{name}(" not in examples]
    assert missing == []


def test_every_client_doc_example_runs(daemon):
    env = {**os.environ, **TEST_ENV, "KSI_SOCKET_PATH": str(daemon.socket_path)}
    for script in client_doc_scripts():
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                              env=env, cwd=ROOT, timeout=120)
        assert done.returncode == 0, f"{script}\n{done.stderr}"
        assert done.stdout.strip() and "Traceback" not in done.stderr
