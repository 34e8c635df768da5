"""The deployment guide (seeds/001) as written: its config file's keys and its start command.

Its config, with its placeholder paths pointed at a temporary directory: every key does what it
says, or is accepted with a warning saying why it has no effect here.
"""
from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from conftest import ROOT, TEST_ENV, data_of, merge_config, TEST_CONFIG
from ksi_daemon.config import ConfigError, load_config
from ksi_daemon.launcher import wait_until_healthy

BUILTIN_PLUGINS_DIR = ROOT / "ksi_daemon" / "plugins"


def guide_config(tmp: Path) -> dict:
    """Step 4's file, its paths made real."""
    return {
        "daemon": {"plugin_dirs": [str(BUILTIN_PLUGINS_DIR), str(tmp / "custom" / "plugins")],
                   "max_event_history": 1000, "event_timeout": 30.0},
        "plugins": {
            "state_service": {"state_dir": str(tmp / "state")},
            "agent_service": {"profiles_dir": str(tmp / "agent_profiles"),
                              "identities_file": str(tmp / "identities.json")},
            "completion_service": {"model": "claude-3-sonnet", "timeout": 300}}}


def write_guide_files(tmp: Path) -> None:
    (tmp / "agent_profiles").mkdir()
    (tmp / "agent_profiles" / "analyst.yaml").write_text(
        "system_prompt: You analyse data and say what you found.\nmodel: offline/default\n")
    (tmp / "identities.json").write_bytes(orjson.dumps(
        {"analyst-1": {"display_name": "Ada", "role": "researcher"}}))


def test_each_service_section_configures_its_plugin(inprocess_factory, tmp_path):
    write_guide_files(tmp_path)
    daemon = inprocess_factory(guide_config(tmp_path))
    with daemon.client() as client:
        health = data_of(client.request("system:health"))
        data_of(client.request("state:set", {"key": "where", "value": "state_dir"}))
        models = data_of(client.request("completion:models"))
        data_of(client.request("agent:spawn", {"profile_name": "analyst",
                                               "agent_id": "analyst-1"}))
        info = data_of(client.request("agent:info", {"agent_id": "analyst-1"}))
        data_of(client.request("agent:spawn", {"profile_name": "analyst", "agent_id": "other"}))
        unknown = data_of(client.request("agent:info", {"agent_id": "other"}))
    # The built-in plugins' own directory in plugin_dirs loads them once, not twice.
    assert health["status"] == "healthy" and health["failed_plugins"] == []
    with sqlite3.connect(tmp_path / "state" / "state.db") as db:  # state_service.state_dir
        assert db.execute("SELECT count(*) FROM state WHERE key = 'where'").fetchone()[0] == 1
    assert models["default_model"] == "claude-3-sonnet"  # completion_service.model
    assert models["default_timeout_s"] == 300  # completion_service.timeout
    assert info["system_prompt"].startswith("You analyse data")  # agent_service.profiles_dir
    assert info["identity"] == {"agent_id": "analyst-1", "display_name": "Ada",
                                "role": "researcher"}  # agent_service.identities_file
    assert unknown.get("identity") is None


def test_the_tuning_keys_are_accepted_with_the_reason_they_do_nothing(tmp_path):
    file = tmp_path / "daemon.json"
    file.write_bytes(orjson.dumps({"daemon": {"event_queue_size": 10000, "worker_threads": 4,
                                              "batch_timeout": 0.1, "log_level": "DEBUG",
                                              "log_events": True, "colour": "blue"}}))
    config, warnings = load_config(str(file), environ={})
    text = "\n".join(warnings)
    for key, why in (("event_queue_size", "no queue"), ("worker_threads", "event loop"),
                     ("batch_timeout", "no timer")):
        assert f"daemon.{key} has no effect here" in text and why in text, text
        assert f"unknown config key daemon.{key}" not in text
    assert "unknown config key daemon.colour" in text  # unknown keys still warn
    assert config["daemon"]["log_level"] == "DEBUG" and config["daemon"]["log_events"] is True


def test_a_guide_key_that_cannot_be_used_is_named(tmp_path):
    file = tmp_path / "daemon.json"
    file.write_bytes(orjson.dumps({"plugins": {"state_service": {"state_dir": 5}}}))
    with pytest.raises(ConfigError, match=r"plugins\.state_service\.state_dir"):
        load_config(str(file), environ={})


def test_the_own_section_wins_over_the_guides(tmp_path):
    file = tmp_path / "daemon.json"
    file.write_bytes(orjson.dumps({"plugins": {
        "completion_service": {"model": "claude-3-sonnet", "timeout": 300},
        "completion": {"default_model": "offline/default"}}}))
    config, _ = load_config(str(file), environ={})
    assert config["plugins"]["completion"] == {"default_model": "offline/default",
                                               "timeout_s": 300}
    assert "completion_service" not in config["plugins"]


def nc(socket_path: Path, line: str) -> dict:
    """`echo LINE | nc -N -U SOCKET`, as the guide's commands send (`-N`: Debian's netcat
    needs it to end the connection after the line; docs/OPERATIONS.md)."""
    done = subprocess.run(f"echo '{line}' | nc -N -U {socket_path}", shell=True,
                          capture_output=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return orjson.loads(done.stdout.splitlines()[0])


def test_the_guides_commands_work_as_written(workdir):
    if subprocess.run(["sh", "-c", "command -v nc"], capture_output=True).returncode != 0:
        pytest.skip("nc (netcat-openbsd) is not installed")
    write_guide_files(workdir)
    sockets = workdir / "ksi"  # the guide's /tmp/ksi
    guide = guide_config(workdir)
    guide["transports"] = {"unix": {"enabled": True, "socket_dir": str(sockets),
                                    "compatibility_mode": True}}
    config = workdir / "daemon.json"
    config.write_bytes(orjson.dumps(merge_config(TEST_CONFIG, guide)))
    var_dir = workdir / "var"
    env = {**os.environ, **TEST_ENV, "HOME": str(workdir), "KSI_VAR_DIR": str(var_dir),
           "PYTHONPATH": str(ROOT), "KSI_LOG_LEVEL": "DEBUG"}
    env.pop("KSI_SOCKET_PATH", None)
    with open(workdir / "out", "wb") as out:
        # python -m ksi_daemon.core_plugin --config ~/.ksi/daemon.json
        proc = subprocess.Popen([sys.executable, "-m", "ksi_daemon.core_plugin",
                                 "--config", str(config)], cwd=workdir, env=env,
                                stdout=out, stderr=subprocess.STDOUT)
        try:
            health = wait_until_healthy(str(var_dir / "run" / "daemon.sock"), proc, timeout=30)
            assert health is not None, (workdir / "out").read_text()
            assert health["status"] == "healthy"
            assert proc.poll() is None  # in the foreground: the command is the daemon
            events = sockets / "events.sock"
            plugins = nc(events, '{"event": "system:plugin_status"}')["data"]["plugins"]
            assert {"state", "agent", "completion"} <= {p["name"] for p in plugins}
            history = nc(events, '{"event": "system:event_history", "data": {"limit": 100}}')
            assert any(e["event"] == "system:plugin_status" for e in history["data"]["events"])
            spawned = nc(events, '{"event": "agent:spawn", "data": {"profile_name": "analyst", '
                                 '"task": "Analyze data"}}')["data"]
            legacy = nc(sockets / "control.sock", '{"command": "GET_AGENTS", "parameters": {}}')
            assert legacy["status"] == "success" and legacy["command"] == "GET_AGENTS"
            assert spawned["agent_id"] in legacy["result"]["agents"]
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(20) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    started = [orjson.loads(line) for line in (var_dir / "logs" / "daemon.log").read_bytes()
               .splitlines() if b'"daemon_started"' in line]
    assert started[0]["log_level"] == "DEBUG"  # KSI_LOG_LEVEL=DEBUG, as the guide sets it
