"""Compatibility mode (issue 18 item 4): the legacy command protocol on control.sock, and the
lines upstream KSI's pluggy-era clients send, through real sockets to a real daemon process;
and, with the mode off, nothing of it.

The upstream lines below are the shapes of durapensa/ksi's ksi_client/event_client.py,
ksi_admin/ and interfaces/orchestrate.py of June 2025 (docs/OPERATIONS.md names the commits);
each check reads the field the upstream code reads. (The upstream clients' lines go to the
in-process daemon's real socket: the Unix transport as a daemon process runs it.)
"""
from __future__ import annotations

import subprocess
import time

import orjson
import pytest

from conftest import LineClient, data_of, error_of

GUIDE_LINE = '{"command": "GET_AGENTS", "parameters": {}}'


@pytest.fixture
def compat_daemon(daemon_factory, workdir):
    return daemon_factory({"transports": {"unix": {"socket_dir": str(workdir / "ksi"),
                                                   "compatibility_mode": True}}})


def control(workdir) -> LineClient:
    return LineClient(workdir / "ksi" / "control.sock")


def command(client: LineClient, name, parameters=None, **line) -> dict:
    """Send one legacy command line; its answer (pushes, event-shaped, are skipped)."""
    body = {"command": name, **line}
    if parameters is not None:
        body["parameters"] = parameters
    client.send_raw(orjson.dumps(body) + b"\n")
    while True:
        message = client.recv()
        if "status" in message and "command" in message:
            return message


def success(answer: dict) -> dict:
    assert answer["status"] == "success", answer
    return answer["result"]


def failure(answer: dict) -> dict:
    assert answer["status"] == "error" and "result" not in answer, answer
    return answer["error"]


def test_every_mapped_legacy_command_answers_in_the_legacy_shape(compat_daemon, workdir):
    with control(workdir) as client:
        assert success(command(client, "HEALTH_CHECK"))["status"] == "healthy"
        spawned = success(command(client, "SPAWN_AGENT", {"profile_name": "assistant",
                                                          "task": "Analyze data"}))
        agents = success(command(client, "GET_AGENTS", {}))["agents"]
        assert agents[spawned["agent_id"]]["profile"] == "assistant"  # keyed by agent id
        assert success(command(client, "SET_AGENT_KV", {"key": "plan.step", "value": [1, 2],
                                                        "owner_agent_id": "a1"}))["status"] \
            == "set"
        got = success(command(client, "GET_AGENT_KV", {"key": "plan.step"}))
        assert got == {"key": "plan.step", "value": [1, 2], "found": True}
        assert success(command(client, "SUBSCRIBE", {"agent_id": "me",
                                                     "event_types": ["BROADCAST"]}))["topics"] \
            == ["BROADCAST"]
        published = success(command(client, "PUBLISH", {"from_agent": "me",
                                                        "event_type": "BROADCAST",
                                                        "payload": {"text": "hello"}}))
        assert published["delivered"] == 1
        queued = success(command(client, "COMPLETION", {"prompt": "hi", "client_id": "me"}))
        assert queued["status"] in ("queued", "processing") and queued["request_id"]
        # the same connection speaks the event protocol too
        assert data_of(client.request("state:get", {"key": "plan.step"}))["value"] == [1, 2]
        # error shapes: refused by the event's schema, unknown, ill-formed; all coded
        missing = failure(command(client, "GET_AGENT_KV", {}))
        assert missing["code"] == "validation_error" and missing["message"]
        unknown = failure(command(client, "NO_SUCH_COMMAND"))
        assert unknown["code"] == "unknown_event" and "GET_AGENTS" in unknown["details"]["commands"]
        assert failure(command(client, "GET_AGENTS", [1]))["code"] == "invalid_request"
        assert failure(command(client, 42))["code"] == "invalid_request"
        # and the connection still answers
        assert success(command(client, "HEALTH_CHECK"))["status"] == "healthy"
        assert success(command(client, "SHUTDOWN"))["status"] == "shutting_down"
    assert compat_daemon.wait(30) == 0


def test_the_guides_netcat_line_on_control_sock(compat_daemon, workdir):
    socket = str(workdir / "ksi" / "control.sock")
    # `nc -N` half-closes after stdin ends: the daemon answers and closes, nc exits.
    done = subprocess.run(f"echo '{GUIDE_LINE}' | nc -N -U {socket}", shell=True,
                          capture_output=True, timeout=15)
    answer = orjson.loads(done.stdout)
    assert done.returncode == 0 and answer["status"] == "success"
    assert answer["command"] == "GET_AGENTS" and answer["result"]["agents"] == {}
    # `nc -U` as the guide writes it: Debian's netcat-openbsd does not half-close at the end of
    # stdin, so the daemon cannot tell the client is done: the answer is printed, and nc waits
    # until it is stopped (Ctrl-C in the guide's terminal).
    nc = subprocess.Popen(["nc", "-U", socket], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        nc.stdin.write(GUIDE_LINE.encode() + b"\n")
        nc.stdin.close()
        answer = orjson.loads(nc.stdout.readline())
        assert answer["status"] == "success" and answer["result"]["agents"] == {}
        time.sleep(0.5)
        assert nc.poll() is None  # still connected, as described
    finally:
        nc.kill()
        nc.wait()


def upstream_request(client: LineClient, event: str, data: dict, cid: str,
                     others: list) -> dict:
    """As EventBasedClient.request_event writes it: client_id and timestamp beside the event.
    What else arrives meanwhile (pushes, replies to other ids) is kept in `others`."""
    client.send_raw(orjson.dumps({"event": event, "data": data, "client_id": "event_client_1",
                                  "timestamp": 12.5, "correlation_id": cid}) + b"\n")
    while True:
        message = client.recv()
        if message.get("correlation_id") == cid and message["type"] == "reply":
            return message.get("data", {})  # what the upstream client resolves with
        others.append(message)


@pytest.mark.daemon("inprocess")  # its completion would import litellm in a daemon process
def test_upstream_clients_lines_are_answered_with_the_fields_they_read(compat_daemon):
    seen: list[dict] = []
    with compat_daemon.socket_client() as client:  # the real socket and transport, in process
        ask = lambda event, data, n=iter(range(1000)): upstream_request(  # noqa: E731
            client, event, data, f"up-{next(n)}", seen)
        assert ask("transport:connection", {"client_id": "event_client_1",
                                            "action": "connect"})["status"] == "connected"
        assert ask("admin:identify", {"client_id": "monitor_1", "role": "monitor",
                                      "capabilities": ["basic"]})["status"] == "identified"
        assert ask("agent:connect", {"agent_id": "event_client_1",
                                     "profile": None})["status"] == "connected"
        # ksi_client/daemon_manager.py: data.status == "healthy", else it restarts the daemon
        assert ask("system:health", {})["status"] == "healthy"
        # MultiAgentClient's state methods
        assert ask("state:set", {"key": "team.goal", "value": "ship",
                                 "namespace": "global"})["status"] == "set"
        got = ask("state:get", {"key": "team.goal", "namespace": "global"})
        assert got["found"] and got["value"] == "ship"
        assert ask("state:list", {"namespace": "global", "pattern": "goal"})["keys"] \
            == ["team.goal"]
        assert ask("state:delete", {"key": "team.goal", "namespace": "global"})["status"] \
            == "deleted"
        assert ask("state:delete", {"key": "team.goal", "namespace": "global"})["status"] \
            == "not_found"
        # get_capabilities: the reply keyed by plugin name, each with its capabilities
        plugins = ask("system:plugins", {})
        assert "commands" in plugins["state"]["capabilities"]
        assert "state:set" in plugins["state"]["capabilities"]["commands"]
        assert "state" in plugins["state"]["capabilities"]["event_namespaces"]
        # discovery: events grouped by namespace, each entry naming its event
        discovered = ask("system:discover", {})
        assert any(e["event"] == "agent:spawn" for e in discovered["events"]["agent"])
        # the message bus, as ksi_admin's monitor and MultiAgentClient use it
        assert ask("message:subscribe", {"agent_id": "event_client_1",
                                         "event_types": ["BROADCAST"]})
        ask("message:publish", {"agent_id": "event_client_1", "event_type": "BROADCAST",
                                "data": {"content": "hello"}})
        ask("message:publish", {"sender": "orchestrator", "topic": "BROADCAST",
                                "payload": {"content": "[END]"}})
        # interfaces/orchestrate.py's spawn, and the chat client's completion
        spawned = ask("agent:spawn", {"profile_name": "assistant", "task": "Join the debate",
                                      "context": '{"topic": "tests"}',
                                      "agent_id": "debater_1"})
        assert spawned["agent_id"] == "debater_1" and "error" not in spawned
        assert ask("agent:spawn", {"composition": "assistant", "task": "hello",
                                   "agent_id": "composed_1"})["profile"] == "assistant"
        ask("completion:async", {"request_id": "event_client_1_ab12", "prompt": "hi",
                                 "client_id": "event_client_1",
                                 "priority": "normal", "agent_config": {"role": "x"}})
        events = ask("monitor:get_events", {"event_patterns": ["state:list", "state:delete"],
                                            "client_id": None,
                                            "limit": 3, "reverse": True})["events"]
        assert [e["event"] for e in events] == ["state:delete", "state:delete", "state:list"]
        assert ask("agent:disconnect", {"agent_id": "event_client_1"})["status"] \
            == "disconnected"
        # the pushes the upstream client waits for, matched as it matches them
        client.settimeout(30)
        while not any(m.get("event") == "completion:result" for m in seen):
            seen.append(client.recv())
        result = next(m["data"] for m in seen if m.get("event") == "completion:result")
        assert result["request_id"] == "event_client_1_ab12" and result["text"]
        contents = [m["data"]["content"] for m in seen if m.get("event") == "message:received"]
        assert {"content": "hello"} in contents and {"content": "[END]"} in contents
        assert ask("transport:connection", {"client_id": "event_client_1",
                                            "action": "disconnect"})["status"] == "disconnected"


def test_todays_clients_keep_todays_shapes_with_the_mode_on(compat_daemon):
    with compat_daemon.client() as client:  # never announced itself as an upstream client
        assert isinstance(data_of(client.request("system:plugins"))["plugins"], list)
        assert isinstance(data_of(client.request("system:discover"))["events"], list)
        assert "status" not in data_of(client.request("state:set", {"key": "k", "value": 1}))
        assert data_of(client.request("message:subscribe", {"topics": ["room"]}))["topics"] \
            == ["room"]


def test_with_the_mode_off_nothing_of_it_exists(daemon_factory, workdir):
    daemon = daemon_factory({"transports": {"unix": {"socket_dir": str(workdir / "ksi")}}})
    assert not (workdir / "ksi" / "control.sock").exists()
    with LineClient(workdir / "ksi" / "events.sock") as client:
        assert error_of(client.request("transport:connection", {"action": "connect"}))["code"] \
            == "unknown_event"
        client.send_raw(GUIDE_LINE.encode() + b"\n")
        refused = client.recv()
        assert refused["type"] == "reply" and refused["error"]["code"] == "invalid_request"
        assert "status" not in data_of(client.request("state:set", {"key": "k", "value": 1}))
        assert error_of(client.request("state:list", {"pattern": "k"}))["code"] \
            == "validation_error"
        assert error_of(client.request("completion:async", {
            "prompt": "hi", "client_id": "c", "priority": "normal"}))["code"] \
            == "validation_error"
        assert isinstance(data_of(client.request("system:plugins"))["plugins"], list)
        names = [p["name"] for p in data_of(client.request("system:plugins"))["plugins"]]
        assert "compat" not in names
