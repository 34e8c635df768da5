"""Start-up, single instance, configuration errors, and clean shutdown of the real process."""
from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson

from conftest import DaemonProcess
from ksi_daemon.launcher import wait_until_healthy

ROOT = Path(__file__).resolve().parent.parent
FEATURES = str(Path(__file__).parent / "plugins" / "features")


def test_sigterm_exits_zero_and_removes_the_socket(daemon):
    assert daemon.socket_path.exists()
    assert daemon.stop(signal.SIGTERM) == 0
    assert not daemon.socket_path.exists()
    assert not (daemon.var_dir / "run" / "daemon.pid").exists()


def test_sigint_exits_zero(daemon):
    assert daemon.stop(signal.SIGINT) == 0
    assert not daemon.socket_path.exists()


def test_system_shutdown_replies_then_exits_zero(daemon):
    reply = daemon.request("system:shutdown")
    assert reply["data"] == {"status": "shutting_down"}
    assert daemon.wait(20) == 0
    assert not daemon.socket_path.exists()


def test_in_flight_request_finishes_during_shutdown(daemon_factory):
    daemon = daemon_factory({"daemon": {"plugin_dirs": [FEATURES]}})
    with daemon.client() as client:
        client.send("greet:slow", {"seconds": 0.5}, correlation_id="slow")
        time.sleep(0.1)
        daemon.proc.send_signal(signal.SIGTERM)
        assert client.recv()["data"] == {"done": True}
    assert daemon.wait(20) == 0


def test_request_past_the_shutdown_deadline_answers_unavailable(daemon_factory):
    daemon = daemon_factory({"daemon": {"plugin_dirs": [FEATURES], "shutdown_timeout": 0.2}})
    with daemon.client() as client:
        client.send("greet:slow", {"seconds": 30}, correlation_id="slow")
        time.sleep(0.1)
        client.send("system:shutdown", correlation_id="stop")
        replies = {m["correlation_id"]: m for m in (client.recv(), client.recv())}
    assert replies["stop"]["data"]["status"] == "shutting_down"
    assert replies["slow"]["error"]["code"] == "unavailable"
    assert daemon.wait(20) == 0


def test_second_daemon_on_the_same_socket_is_refused(daemon):
    second = subprocess.run(
        [sys.executable, "-m", "ksi_daemon", "--foreground", "--config", str(daemon.config_path)],
        cwd=daemon.workdir, env=daemon.env, capture_output=True, text=True, timeout=30)
    assert second.returncode == 2
    assert "already running" in second.stderr
    assert str(daemon.proc.pid) in second.stderr
    assert daemon.request("system:health")["data"]["pid"] == daemon.proc.pid


def test_stale_socket_from_a_dead_daemon_is_replaced(daemon_factory, workdir):
    first = daemon_factory(subdir="a")
    first.proc.kill()
    first.proc.wait()
    assert first.socket_path.exists()  # SIGKILL leaves the file behind
    again = DaemonProcess(first.workdir).start()
    try:
        assert again.request("system:health")["data"]["pid"] == again.proc.pid
    finally:
        assert again.stop() == 0


def test_invalid_config_value_stops_start_up_naming_the_key(workdir):
    daemon = DaemonProcess(workdir, {"daemon": {"event_timeout": "soon"}})
    result = subprocess.run(
        [sys.executable, "-m", "ksi_daemon", "--foreground", "--config", str(daemon.config_path)],
        cwd=workdir, env=daemon.env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert "daemon.event_timeout" in result.stderr
    assert "config file" in result.stderr


def test_invalid_environment_value_names_the_variable(workdir):
    daemon = DaemonProcess(workdir, env={"KSI_MAX_EVENT_HISTORY": "-5"})
    result = subprocess.run([sys.executable, "-m", "ksi_daemon", "--foreground"], cwd=workdir,
                            env=daemon.env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert "daemon.max_event_history" in result.stderr and "KSI_MAX_EVENT_HISTORY" in result.stderr


def test_unknown_config_keys_are_warned_about(daemon_factory):
    daemon = daemon_factory({"daemon": {"worker_count": 4}, "colour": "blue"})
    daemon.stop()
    output = daemon.read_output()
    assert "daemon.worker_count" in output and "colour" in output


def test_log_is_json_lines_and_quiet_per_event(daemon):
    for _ in range(50):
        daemon.request("system:health")
    daemon.stop()
    lines = (daemon.var_dir / "logs" / "daemon.log").read_bytes().splitlines()
    records = [orjson.loads(line) for line in lines]
    assert any(r["event"] == "daemon_started" for r in records)
    assert any(r["event"] == "daemon_stopped" for r in records)
    assert len(records) < 20  # nothing is written per request at the default level


def test_handler_errors_are_logged_with_correlation_id_and_plugin(daemon_factory):
    daemon = daemon_factory({"daemon": {"plugin_dirs": [str(Path(__file__).parent / "plugins"
                                                            / "faulty")]}})
    with daemon.client() as client:
        client.request("flaky:divide", {"a": 1, "b": 0}, correlation_id="trace-me")
    daemon.stop()
    records = [orjson.loads(line) for line in
               (daemon.var_dir / "logs" / "daemon.log").read_bytes().splitlines()]
    errors = [r for r in records if r["event"] == "handler_error"]
    assert errors and errors[0]["correlation_id"] == "trace-me"
    assert errors[0]["plugin"] == "broken_handler" and errors[0]["event_name"] == "flaky:divide"


def test_background_start_returns_once_healthy(workdir):
    daemon = DaemonProcess(workdir)
    result = subprocess.run([sys.executable, "-m", "ksi_daemon", "--config",
                             str(daemon.config_path)], cwd=workdir, env=daemon.env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert str(daemon.socket_path) in result.stdout
    pid = daemon.request("system:health")["data"]["pid"]
    daemon.request("system:shutdown")
    deadline = time.monotonic() + 20
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not daemon.socket_path.exists()


def test_router_stays_under_500_lines():
    lines = (ROOT / "ksi_daemon" / "core" / "router.py").read_text().count("\n")
    assert lines < 500, f"router.py has {lines} lines"


def test_sigterm_during_a_hanging_start_up_still_exits(daemon_factory):
    hanging = str(Path(__file__).parent / "plugins" / "hanging")
    daemon = daemon_factory({"daemon": {"plugin_dirs": [hanging]}}, wait=False)
    entered = daemon.var_dir / "plugins" / "hangs_at_start" / "hanging"
    deadline = time.monotonic() + 30
    while not entered.exists():  # the plugin's ksi_startup, which never returns, is under way
        assert daemon.proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    time.sleep(0.2)  # and start-up is held there
    assert daemon.proc.poll() is None
    assert not daemon.socket_path.exists()
    assert daemon.stop(signal.SIGTERM, timeout=10) == 0
