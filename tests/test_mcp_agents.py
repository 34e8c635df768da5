"""A `claude-cli/...` agent acts through KSI: the real `claude` tool, run by the agent's turn
against the fake Anthropic API, gets KSI's MCP endpoint with the agent's own token, is offered
exactly the agent's tools, calls one, and the call is the agent's."""
from __future__ import annotations

import asyncio
import stat

import httpx2
import orjson
import pytest

from conftest import data_of
from fake_anthropic_server import FakeAnthropicServer, tool_result_of
from ksi_daemon.plugins.completion.claude_cli import ClaudeRunner
from test_completion import claude_binary, claude_env
from test_mcp_http import INITIALIZE

PROFILE = {"name": "scout", "model": "claude-cli/sonnet", "max_turns": 5,
           "tools": ["message:publish", "state:get"]}
PUBLISH = {"topic": "news", "content": "hello from scout", "sender": "the-boss"}


@pytest.fixture
def claude_agents(daemon_factory):
    binary = claude_binary()
    with FakeAnthropicServer() as api:
        env = claude_env(api.base_url)
        config = {"plugins": {"mcp": {"http": "127.0.0.1:0"},
                              "completion": {"claude_cli": {"binary": str(binary),
                                                            "timeout_s": 90}}}}
        yield daemon_factory(config=config, env=env), api


def scout_answers(daemon, content: str) -> str:
    """Spawn agent `scout` (PROFILE) and send it `content`; its reply's text."""
    data_of(daemon.request("agent:spawn", {"config": PROFILE, "agent_id": "scout"}))
    with daemon.client(timeout=120) as client:
        sent = client.request("agent:send", {"agent_id": "scout", "content": content,
                                             "wait": True, "timeout_s": 110})
    return data_of(sent)["reply"]["text"]


def mcp_tools_offered(request: dict) -> set[str]:
    return {tool["name"] for tool in request.get("tools") or ()
            if tool["name"].startswith("mcp__")}


def test_a_claude_agent_calls_a_ksi_tool_as_itself(claude_agents):
    daemon, api = claude_agents
    text = scout_answers(daemon, "call mcp__ksi__message_publish with "
                         f"{orjson.dumps(PUBLISH).decode()}")

    # The model was offered the agent's KSI tools, and only those.
    asked = [r for r in api.requests if mcp_tools_offered(r)]
    assert asked, "claude offered the model no KSI tool"
    assert mcp_tools_offered(asked[0]) == {"mcp__ksi__message_publish", "mcp__ksi__state_get"}

    # claude ran the call over MCP and sent the model its result: the publish's reply.
    results = [tool_result_of(r["messages"]) for r in api.requests]
    results = [result for result in results if result is not None]
    assert len(results) == 1, results
    published = orjson.loads(results[0])
    assert set(published) == {"message_id", "delivered"}
    assert text == f"claude-fake got: {results[0]}"

    # The message is the agent's, whatever the model wrote as its sender.
    history = data_of(daemon.request("message:history", {"topic": "news"}))["messages"]
    assert [(m["message_id"], m["sender"], m["content"]) for m in history] == \
        [(published["message_id"], "scout", "hello from scout")]


def test_a_tool_outside_the_profile_is_not_offered_to_claude(claude_agents):
    daemon, _api = claude_agents
    text = scout_answers(daemon, 'call mcp__ksi__state_set with {"key": "k", "value": 1}')
    assert text == "claude-fake has no tool mcp__ksi__state_set"
    assert data_of(daemon.request("state:get", {"key": "k"}))["found"] is False


def test_the_agents_mcp_config_is_private_and_names_its_own_token(claude_agents):
    daemon, _api = claude_agents
    assert scout_answers(daemon, "hello") == "claude-fake heard: hello"
    configs = list((daemon.var_dir / "plugins" / "mcp" / "agents").glob("*.json"))
    assert len(configs) == 1
    assert stat.S_IMODE(configs[0].stat().st_mode) == 0o600
    server = orjson.loads(configs[0].read_bytes())["mcpServers"]["ksi"]
    host_token = (daemon.var_dir / "plugins" / "mcp" / "http.token").read_text().strip()
    assert server["type"] == "http"
    assert server["url"] == data_of(daemon.request("mcp:status"))["http"]["url"]
    assert server["headers"]["Authorization"].startswith("Bearer ")
    assert server["headers"]["Authorization"] != f"Bearer {host_token}"

    # Terminated, the agent's token is refused and its config file is gone.
    async def initialize(authorization: str) -> int:
        async with httpx2.AsyncClient() as http:
            answer = await http.post(server["url"], json=INITIALIZE, headers={
                "Authorization": authorization,
                "Accept": "application/json, text/event-stream"})
        return answer.status_code
    assert asyncio.run(initialize(server["headers"]["Authorization"])) == 200
    data_of(daemon.request("agent:terminate", {"agent_id": "scout"}))
    assert not configs[0].exists()
    assert asyncio.run(initialize(server["headers"]["Authorization"])) == 401
    assert asyncio.run(initialize(f"Bearer {host_token}")) == 200  # the host's still works


def test_claude_is_given_the_config_file_and_only_the_agents_tools():
    mcp = {"path": "/var/ksi/plugins/mcp/agents/a.json",
           "allowed_tools": ["mcp__ksi__message_publish", "mcp__ksi__state_get"]}
    args = ClaudeRunner(binary="claude").command(
        "sonnet", [{"role": "user", "content": "hi"}], None, False, mcp)
    at = args.index("--mcp-config")
    # The file, not its JSON: the token must not be on a command line other users can read.
    assert args[at:at + 5] == ["--mcp-config", mcp["path"], "--strict-mcp-config",
                               "--allowedTools", "mcp__ksi__message_publish,mcp__ksi__state_get"]


def test_without_the_http_endpoint_a_claude_agent_with_tools_says_why(daemon_factory):
    binary = claude_binary()
    daemon = daemon_factory(config={"plugins": {"completion": {
        "claude_cli": {"binary": str(binary), "timeout_s": 30}}}})
    reply = daemon.request("completion:request", {
        "prompt": "hi", "model": "claude-cli/sonnet", "tools": ["state:get"]})
    assert reply["error"]["code"] == "unavailable"
    assert "plugins.mcp.http" in reply["error"]["message"]
