"""Agents using MCP servers' tools (issue 16 item 6): a profile's `mcp_servers`, the servers
started at first use, shared by the profile's agents, restarted after a death, stopped with the
last agent and at shutdown, bad configs refused. Through a real daemon's socket, against
tests/mcp_test_server.py (written with the official SDK) run by the daemon through the SDK's
client, and the offline model's `/tool` lines.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from conftest import ROOT, TEST_ENV, DaemonProcess, data_of, error_of, module_daemon

from ksi_daemon.plugins.tools.mcp_config import HttpServer, is_loopback
from ksi_daemon.plugins.tools.mcp_connection import Backoff

SERVER = Path(__file__).parent / "mcp_test_server.py"
CONFIG = {"plugins": {"tools": {"mcp": {"start_timeout_s": 5, "call_timeout_s": 1.5,
                                        "backoff_s": 0.2, "backoff_max_s": 1}}}}


def echo(text: str) -> str:
    return f"Echo it.\n/tool kit__echo {orjson.dumps({'text': text}).decode()}"


@pytest.fixture(scope="module")
def shared():
    with module_daemon(CONFIG, "ksi-mcpt-") as daemon:
        yield daemon


def kit(pid_file: Path, *more: str) -> dict:
    return {"kit": {"command": sys.executable,
                    "args": [str(SERVER), "--pid-file", str(pid_file), *more]}}


def spawn(client, agent_id: str, servers: dict, name: str = "toolsmith") -> dict:
    return data_of(client.request("agent:spawn", {
        "agent_id": agent_id, "config": {"name": name, "mcp_servers": servers}}))


def ask(client, agent_id: str, content: str) -> str:
    reply = data_of(client.request("agent:send", {"agent_id": agent_id, "content": content,
                                                  "wait": True, "timeout_s": 30}))
    return reply["reply"]["text"]


def server_status(client, agent_id: str) -> dict:
    servers = data_of(client.request("tools:mcp_servers", {"agent_id": agent_id}))["servers"]
    assert len(servers) == 1, servers
    return servers[0]


def terminate(client, agent_id: str, pid: int | None = None) -> None:
    """End the agent; with `pid`, also wait until that server process is gone."""
    data_of(client.request("agent:terminate", {"agent_id": agent_id}))
    if pid is not None:
        wait_until(lambda: not alive(pid), what=f"the exit of {agent_id}'s server")


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split()[2] != "Z"  # a zombie has exited
    except FileNotFoundError:
        return False


def wait_until(condition, timeout: float = 10.0, what: str = "the condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout} s")
        time.sleep(0.05)


def test_an_agent_uses_its_profiles_mcp_tool_and_the_server_starts_only_then(shared):
    pid_file = shared.workdir / "first.pid"
    profiles = shared.var_dir / "agent_profiles"
    profiles.mkdir(parents=True, exist_ok=True)
    (profiles / "toolsmith.json").write_bytes(orjson.dumps({"mcp_servers": kit(pid_file)}))
    with shared.client(timeout=30) as client:
        data_of(client.request("agent:spawn", {"profile": "toolsmith", "agent_id": "smith"}))
        before = server_status(client, "smith")
        assert before["state"] == "stopped" and before["tools"] is None
        assert not pid_file.exists()  # lazy: no process before the first turn needs it
        text = ask(client, "smith", echo("hello mcp"))
        pid = int(pid_file.read_text())
        assert f"echo from {pid}: hello mcp" in text
        assert alive(pid)
        after = server_status(client, "smith")
        assert after["state"] == "running" and after["tools"] == 4 and after["starts"] == 1
        listed = data_of(client.request("tools:list", {"agent_id": "smith"}))["tools"]
        mine = {tool["model_name"]: tool for tool in listed if tool["source"] == "mcp:kit"}
        assert set(mine) == {"kit__echo", "kit__add", "kit__fail", "kit__slow"}
        assert mine["kit__add"]["name"] == "mcp:kit:add"
        assert mine["kit__add"]["parameters"]["required"] == ["a", "b"]
        terminate(client, "smith", pid)


def test_the_tool_result_and_a_failing_tool_reach_the_conversation(shared):
    pid_file = shared.workdir / "results.pid"
    with shared.client(timeout=30) as client:
        spawn(client, "adder", kit(pid_file), name="adder")
        text = ask(client, "adder", 'Add.\n/tool kit__add {"a": 40, "b": 2}\n/tool kit__fail {}')
        assert '{"result":42}' in text
        assert "handler_error" in text and "this tool always fails" in text
        session = data_of(client.request("agent:info", {"agent_id": "adder"}))["session_id"]
        turns = wait_until(lambda: [t for t in client.request("conversation:get", {
            "session_id": session}).get("data", {}).get("messages", []) if t.get("tool_calls")],
            what="the turn's storing")  # (stored just after the reply: not_found until then)
        assert [c["function"]["name"] for c in turns[0]["tool_calls"]] == ["kit__add",
                                                                           "kit__fail"]
        terminate(client, "adder")


def test_a_call_past_its_timeout_is_a_timeout_result_and_the_server_serves_on(shared):
    with shared.client(timeout=30) as client:
        spawn(client, "waiter", kit(shared.workdir / "slow.pid"), name="waiter")
        started = time.monotonic()
        text = ask(client, "waiter", 'Wait.\n/tool kit__slow {"seconds": 20}')
        assert '"code":"timeout"' in text and time.monotonic() - started < 10
        assert "echo from" in ask(client, "waiter", echo("still there"))
        terminate(client, "waiter")


def test_agents_of_one_profile_share_a_server_which_stops_with_the_last(shared):
    pid_file = shared.workdir / "shared.pid"
    with shared.client(timeout=30) as client:
        spawn(client, "twin-a", kit(pid_file), name="twins")
        spawn(client, "twin-b", kit(pid_file), name="twins")
        first, second = ask(client, "twin-a", echo("a")), ask(client, "twin-b", echo("b"))
        pid = int(pid_file.read_text())
        assert f"echo from {pid}: a" in first and f"echo from {pid}: b" in second
        assert server_status(client, "twin-b")["agents"] == ["twin-a", "twin-b"]
        terminate(client, "twin-a")
        assert alive(pid) and server_status(client, "twin-b")["state"] == "running"
        terminate(client, "twin-b", pid)  # the last one


def test_a_killed_server_is_restarted_by_the_next_call(shared):
    pid_file = shared.workdir / "killed.pid"
    with shared.client(timeout=30) as client:
        spawn(client, "phoenix", kit(pid_file), name="phoenix")
        ask(client, "phoenix", echo("one"))
        first = int(pid_file.read_text())
        os.kill(first, signal.SIGKILL)
        wait_until(lambda: server_status(client, "phoenix")["state"] == "down",
                   what="the daemon noticing the death")
        text = ask(client, "phoenix", echo("two"))
        second = int(pid_file.read_text())
        assert second != first and f"echo from {second}: two" in text
        assert server_status(client, "phoenix")["starts"] == 2
        terminate(client, "phoenix", second)


def test_a_server_that_does_not_come_back_is_an_unavailable_tool_result(shared):
    pid_file, broken = shared.workdir / "broken.pid", shared.workdir / "broken.marker"
    with shared.client(timeout=30) as client:
        spawn(client, "icarus", kit(pid_file, "--refuse-if", str(broken)), name="icarus")
        ask(client, "icarus", echo("fine"))
        broken.touch()  # from now on the server exits as soon as it is started
        os.kill(int(pid_file.read_text()), signal.SIGKILL)
        wait_until(lambda: server_status(client, "icarus")["state"] == "down")
        started = time.monotonic()
        text = ask(client, "icarus", echo("again"))
        assert '"code":"unavailable"' in text and "did not start" in text
        # Within its back-off the next call does not even try, and answers at once.
        text = ask(client, "icarus", echo("and again"))
        assert '"code":"unavailable"' in text
        assert time.monotonic() - started < 10
        status = server_status(client, "icarus")
        assert status["state"] == "down" and status["starts"] == 1
        broken.unlink()  # fixed: after the back-off, the next call starts it again
        time.sleep(1.1)
        assert "echo from" in ask(client, "icarus", echo("back"))
        terminate(client, "icarus")


def test_a_server_that_never_starts_leaves_the_turn_without_its_tools(shared):
    broken = shared.workdir / "never.marker"
    broken.touch()
    with shared.client(timeout=30) as client:
        spawn(client, "grounded", kit(shared.workdir / "never.pid", "--refuse-if", str(broken)),
              name="grounded")
        started = time.monotonic()
        text = ask(client, "grounded", echo("anyone?"))
        assert time.monotonic() - started < 5
        assert "I used my tools" not in text  # none was offered, so the model called none
        status = server_status(client, "grounded")
        assert status["state"] == "down" and status["tools"] is None
        assert "Connection closed" in status["last_error"]  # it exited during the handshake
        terminate(client, "grounded")


@pytest.mark.parametrize("servers, says", [
    ({"kit": {"command": "python", "bogus": 1}}, "bogus"),
    ({"kit": {"url": "http://example.com/mcp"}}, "loopback"),
    ({"kit": {"url": "ftp://127.0.0.1/mcp"}}, "http"),
    ({"kit": {}}, "command"),
    ({"bad_name": {"command": "python"}}, "mcp_servers"),
])
def test_a_bad_server_config_is_a_validation_error_and_no_agent(shared, servers, says):
    with shared.client(timeout=30) as client:
        error = error_of(client.request("agent:spawn", {
            "agent_id": "misconfigured", "config": {"name": "bad", "mcp_servers": servers}}))
        assert error["code"] == "validation_error"
        assert says in orjson.dumps(error).decode()
        assert error_of(client.request("agent:info", {"agent_id": "misconfigured"}))["code"] \
            == "not_found"
        assert data_of(client.request("system:health"))  # still serving


def test_clients_may_not_attach_servers_themselves(shared):
    with shared.client() as client:
        error = error_of(client.request("tools:mcp_attach", {
            "agent_id": "x", "owner": "x", "servers": {"kit": {"command": "true"}}}))
    assert error["code"] == "forbidden"


def test_a_streamable_http_server_on_loopback(shared):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([sys.executable, str(SERVER), "--http", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: _accepts(port), what="the HTTP server listening")
        with shared.client(timeout=30) as client:
            spawn(client, "webby", {"kit": {"url": f"http://127.0.0.1:{port}/mcp"}},
                  name="webby")
            assert f"echo from {server.pid}: over http" in ask(client, "webby",
                                                               echo("over http"))
            assert server_status(client, "webby")["transport"] == "http"
            terminate(client, "webby")
    finally:
        server.kill()
        server.wait()


def _accepts(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def test_daemon_shutdown_stops_every_server_and_a_restart_brings_the_tools_back(workdir):
    daemon = DaemonProcess(workdir, CONFIG).start()
    pid_file = workdir / "shutdown.pid"
    try:
        with daemon.client(timeout=30) as client:
            spawn(client, "stayer", kit(pid_file))
            ask(client, "stayer", echo("before the end"))
        first = int(pid_file.read_text())
        assert alive(first)
    finally:
        daemon.stop()
    wait_until(lambda: not alive(first), timeout=5, what="the server's exit at shutdown")
    daemon.start()
    try:
        with daemon.client(timeout=30) as client:
            assert server_status(client, "stayer")["state"] == "stopped"  # attached, not started
            text = ask(client, "stayer", echo("after the restart"))
        second = int(pid_file.read_text())
        assert second != first and f"echo from {second}: after the restart" in text
    finally:
        daemon.stop()
    wait_until(lambda: not alive(second), timeout=5, what="the server's exit at shutdown")


# ---- in-process: the rules themselves ---------------------------------------------------------

def test_only_loopback_hosts_are_accepted():
    assert all(map(is_loopback, ["127.0.0.1", "127.3.4.5", "::1", "localhost", "LOCALHOST"]))
    assert not any(map(is_loopback, ["10.0.0.1", "example.com", "0.0.0.0", "::"]))
    assert HttpServer(url="http://[::1]:9000/mcp").url == "http://[::1]:9000/mcp"


def test_back_off_doubles_until_a_call_succeeds():
    backoff = Backoff(first_s=10, max_s=25)
    assert backoff.wait_s() == 0
    backoff.failed()
    assert 9 < backoff.wait_s() <= 10
    backoff.failed()
    assert 19 < backoff.wait_s() <= 20
    backoff.failed()
    assert 24 < backoff.wait_s() <= 25  # capped
    backoff.succeeded()
    assert backoff.wait_s() == 0


def test_the_documented_example_runs_as_shown(shared):
    from doc_examples import doc_example
    from test_docs import FILE_BLOCK
    docs = (ROOT / "docs" / "TOOLS.md").read_text(encoding="utf-8")
    blocks = dict(m.group("path", "code") for m in FILE_BLOCK.finditer(docs))
    example = "examples/mcp/units_server.py"
    assert blocks[example] == (ROOT / example).read_text(encoding="utf-8")
    code, shown = doc_example("TOOLS.md", "mcp-agent")
    script = shared.workdir / "mcp_agent_example.py"
    script.write_text(code, encoding="utf-8")
    env = {**os.environ, **TEST_ENV, "KSI_SOCKET_PATH": str(shared.socket_path),
           "PYTHONPATH": str(ROOT)}
    # From the repository root, as the doc says (the script finds the server by its path).
    result = subprocess.run([sys.executable, str(script)], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout == shown
