"""The `mcp` plugin's streamable-HTTP endpoint as MCP hosts use it: the MCP SDK's own client
over HTTP (the 2026-07-28 protocol and the 2025 handshake) with the token from the token file,
in front of a real daemon; requests without the token; a non-loopback address; restarts."""
from __future__ import annotations

import contextlib
import os
import signal
import stat
import subprocess
from pathlib import Path

import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

from conftest import ROOT, data_of, module_daemon
from ksi_daemon.plugins.mcp.settings import NotLoopback, loopback_address
from test_completion import claude_binary, claude_env
from test_mcp_server import check_the_everyday_tools, error_in, tool_names

HTTP_CONFIG = {"plugins": {"mcp": {"http": "127.0.0.1:0"}}}  # port 0: any free port
INITIALIZE = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
    "protocolVersion": "2025-11-25", "capabilities": {},
    "clientInfo": {"name": "curl-like", "version": "1"}}}


def endpoint_of(daemon) -> tuple[str, str]:
    """(url, host token) as a host finds them: mcp:status, then the token file."""
    http = data_of(daemon.request("mcp:status"))["http"]
    return http["url"], Path(http["token_file"]).read_text().strip()


@contextlib.asynccontextmanager
async def http_host(url: str, token: str, *, mode: str = "auto", on_message=None):
    headers = {"Authorization": f"Bearer {token}"}
    transport = streamable_http_client(url, http_client=create_mcp_http_client(headers=headers))
    async with Client(transport, mode=mode, read_timeout_seconds=30,
                      message_handler=on_message) as client:
        yield client


@pytest.fixture(scope="module")
def http_daemon():
    with module_daemon(HTTP_CONFIG, "ksi-mcph-") as daemon:
        yield daemon


async def test_a_current_host_with_the_token_lists_and_calls_the_everyday_tools(http_daemon):
    url, token = endpoint_of(http_daemon)
    async with http_host(url, token) as client:
        assert client.protocol_version == "2026-07-28"
        await check_the_everyday_tools(client, "mcp-http-modern")


async def test_a_2025_host_gets_the_same_tools_through_the_handshake(http_daemon):
    url, token = endpoint_of(http_daemon)
    async with http_host(url, token, mode="legacy") as client:
        assert client.protocol_version == "2025-11-25"
        await check_the_everyday_tools(client, "mcp-http-legacy")
        # The same tools as over stdio: every event tool that is not explicit-only.
        listed = http_daemon.request("tools:list")["data"]["tools"]
        expected = {t["model_name"] for t in listed
                    if t["source"] == "event" and not t["explicit_only"]}
        assert await tool_names(client) == expected


def test_the_token_file_is_the_owners_alone(http_daemon):
    token_file = Path(data_of(http_daemon.request("mcp:status"))["http"]["token_file"])
    assert token_file.parent == http_daemon.var_dir / "plugins" / "mcp"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert len(token_file.read_text().strip()) >= 40


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer not-the-token"},
                                     {"Authorization": "Basic dXNlcjpwYXNz"}],
                         ids=["no token", "wrong token", "not bearer"])
async def test_a_request_without_the_token_is_refused_with_401(http_daemon, headers):
    url, token = endpoint_of(http_daemon)
    async with httpx2.AsyncClient() as http:
        refused = await http.post(url, json=INITIALIZE, headers={
            **headers, "Accept": "application/json, text/event-stream"})
    assert refused.status_code == 401
    assert refused.headers["www-authenticate"].startswith("Bearer")
    assert "mcp-session-id" not in refused.headers  # no session was opened for it
    # ... and the endpoint still serves the host that has the token.
    async with http_host(url, token) as client:
        assert not (await client.call_tool("system_health", {})).is_error


async def test_a_session_answers_only_the_token_that_opened_it(http_daemon):
    url, token = endpoint_of(http_daemon)
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/json, "
               "text/event-stream"}
    async with httpx2.AsyncClient() as http:
        opened = await http.post(url, json=INITIALIZE, headers=headers)
        assert opened.status_code == 200
        session = opened.headers["mcp-session-id"]
        hijack = await http.post(url, json={"jsonrpc": "2.0", "id": 2, "method": "tools/list"},
                                 headers={**headers, "Authorization": "Bearer guessed",
                                          "mcp-session-id": session})
        assert hijack.status_code == 401


async def test_a_dangerous_tool_is_offered_only_when_the_config_allows_it(daemon_factory):
    daemon = daemon_factory(config={"plugins": {"mcp": {
        "http": "127.0.0.1:0", "allow": ["state:*", "state:clear"]}}})
    url, token = endpoint_of(daemon)
    async with http_host(url, token) as client:
        names = await tool_names(client)
        assert "state_clear" in names and "system_shutdown" not in names
        assert names == {name for name in names if name.startswith("state_")}
        refused = error_in(await client.call_tool("system_health", {}))
        assert refused["code"] == "not_found"


async def test_a_restarted_daemon_has_a_new_token_and_serves_a_new_session(daemon_factory):
    daemon = daemon_factory(config=HTTP_CONFIG)
    url, token = endpoint_of(daemon)
    async with http_host(url, token) as client:
        await client.call_tool("state_set", {"namespace": "mcp-restart", "key": "k",
                                             "value": "kept"})
    daemon.stop()
    assert not (daemon.var_dir / "plugins" / "mcp" / "http.token").exists()
    daemon.start()
    new_url, new_token = endpoint_of(daemon)
    assert new_token != token
    async with httpx2.AsyncClient() as http:
        old = await http.post(new_url, json=INITIALIZE, headers={
            "Authorization": f"Bearer {token}",
            "Accept": "application/json, text/event-stream"})
    assert old.status_code == 401
    async with http_host(new_url, new_token, mode="legacy") as client:
        read = await client.call_tool("state_get", {"namespace": "mcp-restart", "key": "k"})
        assert read.structured_content["value"] == "kept"


async def test_the_daemon_stops_at_once_under_a_live_session(daemon_factory):
    """A legacy host holds a GET stream open; SIGTERM still ends the daemon promptly, cleanly,
    with no task left behind."""
    daemon = daemon_factory(config=HTTP_CONFIG)
    url, token = endpoint_of(daemon)
    async with http_host(url, token, mode="legacy") as client:
        assert "state_get" in await tool_names(client)
        assert daemon.stop(signal.SIGTERM, timeout=10) == 0
    log = daemon.read_output()
    assert "exiting_past_stuck_tasks" not in log
    assert "service crashed" not in log and "Traceback" not in log


def test_a_non_loopback_address_is_refused_and_the_daemon_keeps_working(daemon_factory):
    daemon = daemon_factory(config={"plugins": {"mcp": {"http": "0.0.0.0:8765"}}})
    health = data_of(daemon.request("system:health"))
    assert health["status"] == "degraded"
    failed = {p["plugin"]: p["error"] for p in health["failed_plugins"]}
    assert "loopback only" in failed["mcp"]
    assert "mcp_http_refused" in daemon.read_output()
    assert daemon.request("mcp:status")["error"]["code"] == "unavailable"
    assert data_of(daemon.request("state:set", {"key": "k", "value": 1}))["version"] == 1


def test_a_taken_port_fails_the_plugin_not_the_daemon(daemon_factory):
    first = daemon_factory(config=HTTP_CONFIG, subdir="first")
    port = endpoint_of(first)[0].rsplit(":", 1)[1].split("/")[0]
    second = daemon_factory(config={"plugins": {"mcp": {"http": f"127.0.0.1:{port}"}}},
                            subdir="second")
    failed = {p["plugin"]: p["error"]
              for p in data_of(second.request("system:health"))["failed_plugins"]}
    assert "Address already in use" in failed["mcp"]


def test_http_is_off_by_default(daemon):
    assert data_of(daemon.request("mcp:status")) == {"http": None}
    assert "mcp_http_off" in daemon.read_output()
    assert not (daemon.var_dir / "plugins" / "mcp" / "http.token").exists()
    # An agent's config is asked for by plugins only.
    assert daemon.request("mcp:agent_config", {"tools": ["state:get"]})["error"]["code"] == \
        "forbidden"


def test_the_claude_mcp_add_line_of_docs_mcp_connects_claude_code(daemon_factory):
    """The documented line, run as written from the daemon's directory (only the port and the
    binary's path differ), gives a Claude Code whose health check connects with the token."""
    binary = claude_binary()
    line = next(line.strip() for line in (ROOT / "docs" / "MCP.md").read_text().splitlines()
                if line.strip().startswith("claude mcp add --transport http"))
    daemon = daemon_factory(config=HTTP_CONFIG)
    url, _token = endpoint_of(daemon)
    command = line.replace("http://127.0.0.1:8765/mcp", url).replace("claude ", f"{binary} ", 1)
    env = {**os.environ, **claude_env("http://127.0.0.1:9"), "HOME": str(daemon.workdir)}
    added = subprocess.run(["bash", "-c", command], cwd=daemon.workdir, env=env,
                           capture_output=True, text=True, timeout=60)
    assert added.returncode == 0, added.stderr
    listed = subprocess.run([str(binary), "mcp", "list"], cwd=daemon.workdir, env=env,
                            capture_output=True, text=True, timeout=60)
    assert f"ksi: {url} (HTTP) - ✓ Connected" in listed.stdout, listed.stdout + listed.stderr


@pytest.mark.parametrize("address, bound", [("127.0.0.1:8765", ("127.0.0.1", 8765)),
                                            ("localhost:0", ("127.0.0.1", 0)),
                                            ("[::1]:9000", ("::1", 9000)),
                                            ("127.1.2.3:80", ("127.1.2.3", 80))])
def test_loopback_addresses_are_taken(address, bound):
    assert loopback_address(address) == bound


@pytest.mark.parametrize("address", ["0.0.0.0:8765", "192.168.1.5:8765", "[::]:8765",
                                     "example.com:8765", "127.0.0.1", "127.0.0.1:http",
                                     "127.0.0.1:70000", ""])
def test_other_addresses_are_refused_with_the_reason(address):
    with pytest.raises(NotLoopback, match="plugins.mcp.http"):
        loopback_address(address)
