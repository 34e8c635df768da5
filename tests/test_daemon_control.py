"""daemon_control.py end to end: the commands a user types, against the real daemon process."""
from __future__ import annotations

import os
import select
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson
import pytest

from conftest import TEST_ENV, LineClient, home_with_test_config

ROOT = Path(__file__).resolve().parent.parent
CONTROL = ROOT / "daemon_control.py"

# A stand-in daemon that answers health and acknowledges system:shutdown but never exits, and
# ignores SIGTERM: the only way to stop it is SIGKILL. It holds the lock the way the daemon does.
STUBBORN_DAEMON = r"""
import fcntl, os, signal, socket, sys
import orjson
socket_path = sys.argv[1]
os.makedirs(os.path.dirname(socket_path), mode=0o700, exist_ok=True)
lock = os.open(socket_path + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
os.ftruncate(lock, 0)
os.write(lock, str(os.getpid()).encode())
signal.signal(signal.SIGTERM, signal.SIG_IGN)
server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
server.bind(socket_path)
server.listen(8)
while True:
    conn, _ = server.accept()
    with conn:
        request = orjson.loads(conn.makefile("rb").readline())
        data = {"status": "shutting_down"} if request["event"] == "system:shutdown" else \
            {"status": "healthy", "uptime_s": 1.0, "version": "0", "pid": os.getpid(),
             "plugins": {"active": 0, "failed": 0}, "connections": 1}
        conn.sendall(orjson.dumps({"type": "reply", "event": request["event"],
                                   "correlation_id": "c", "data": data}) + b"\n")
"""


def is_running(pid: int) -> bool:
    """Alive and not a zombie (an unreaped zombie has exited: it holds no socket or lock)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
        threads = len(os.listdir(f"/proc/{pid}/task"))
    except OSError:
        return False
    # A killed leader can show Z while its other threads (still holding the fds) are exiting.
    return state not in ("Z", "X") or threads > 1


class Control:
    """Runs `daemon_control.py` as a user would, in a private directory with its own var dir."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.var_dir = workdir / "var"
        self.socket_path = self.var_dir / "run" / "daemon.sock"
        self.lock_path = Path(str(self.socket_path) + ".lock")
        self.env = {**os.environ, **TEST_ENV, "HOME": str(home_with_test_config(workdir)),
                    "KSI_VAR_DIR": str(self.var_dir)}
        for name in ("KSI_SOCKET_PATH", "KSI_CONFIG", "VIRTUAL_ENV"):
            self.env.pop(name, None)

    def run(self, *args: str, timeout: float = 90) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(CONTROL), *args], cwd=self.workdir,
                              env=self.env, capture_output=True, text=True, timeout=timeout)

    def popen(self, *args: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, str(CONTROL), *args], cwd=self.workdir,
                                env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def request(self, event: str, data: dict | None = None) -> dict:
        with LineClient(self.socket_path) as client:
            return client.request(event, data)

    def started(self) -> int:
        result = self.run("start")
        assert result.returncode == 0, result.stderr
        return self.request("system:health")["data"]["pid"]

    def leftover_processes(self) -> list[int]:
        """Processes started for this test (found by their private KSI_VAR_DIR)."""
        marker = f"KSI_VAR_DIR={self.var_dir}\0".encode()
        pids = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and int(entry.name) != os.getpid():
                try:
                    if marker in (entry / "environ").read_bytes() and is_running(int(entry.name)):
                        pids.append(int(entry.name))
                except OSError:
                    pass
        return pids


@pytest.fixture
def control():
    # Short path under /tmp: a Unix socket path may not exceed 107 bytes.
    workdir = Path(tempfile.mkdtemp(prefix="ksc-", dir="/tmp"))
    ctl = Control(workdir)
    yield ctl
    for pid in ctl.leftover_processes():
        os.kill(pid, signal.SIGKILL)
    shutil.rmtree(workdir, ignore_errors=True)


def test_start_runs_the_daemon_in_the_background_and_says_how_to_reach_it(control):
    result = control.run("start")
    assert result.returncode == 0, result.stderr
    assert str(control.socket_path) in result.stdout
    assert f"nc -N -U {control.socket_path}" in result.stdout
    assert "from ksi_client import EventClient" in result.stdout
    chat = Path(__file__).resolve().parent.parent / "interfaces" / "chat.py"
    assert ("interfaces/chat.py" in result.stdout) == chat.exists()
    health = control.request("system:health")["data"]
    assert health["status"] == "healthy"
    assert f"pid {health['pid']}" in result.stdout
    assert control.lock_path.read_text() == str(health["pid"])
    assert (control.var_dir / "run" / "daemon.pid").read_text() == str(health["pid"])


def test_second_start_is_refused_and_the_first_daemon_keeps_running(control):
    pid = control.started()
    result = control.run("start")
    assert result.returncode != 0
    assert f"KSI is already running (pid {pid}) on {control.socket_path}" in result.stderr
    assert control.request("system:health")["data"]["pid"] == pid


def test_status_shows_pid_uptime_socket_version_and_plugins(control):
    pid = control.started()
    result = control.run("status")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "KSI is running"
    fields = dict(line.split(None, 1) for line in lines[1:] if line.startswith("  "))
    assert fields["pid"] == str(pid)
    assert fields["socket"] == str(control.socket_path)
    assert fields["version"] == "0.1.0"
    assert "uptime" in fields
    health = control.request("system:health")["data"]
    assert fields["plugins"] == (f"{health['plugins']['active']} active, "
                                 f"{health['plugins']['failed']} failed")
    plugin_rows = {line.split()[0]: line.split() for line in lines if line and
                   not line.startswith(" ") and line.split()[0] in ("system", "transport_unix")}
    assert plugin_rows["system"][2] == "active"
    assert plugin_rows["transport_unix"][2] == "active"


def test_status_json_is_one_object_a_script_can_read(control):
    pid = control.started()
    result = control.run("status", "--json")
    assert result.returncode == 0, result.stderr
    report = orjson.loads(result.stdout)
    assert report["running"] is True
    assert report["pid"] == pid
    assert report["socket"] == str(control.socket_path)
    assert report["uptime_s"] >= 0
    states = {p["name"]: p["state"] for p in report["plugins"]}
    assert states["system"] == "active" and states["transport_unix"] == "active"
    assert report["plugin_counts"]["active"] == sum(s == "active" for s in states.values())


def test_health_prints_the_health_reply(control):
    pid = control.started()
    result = control.run("health")
    assert result.returncode == 0, result.stderr
    fields = dict(line.split(None, 1) for line in result.stdout.splitlines())
    assert fields["status"] == "healthy"
    assert fields["pid"] == str(pid)
    as_json = control.run("health", "--json")
    assert orjson.loads(as_json.stdout)["pid"] == pid


def test_logs_show_the_last_lines_of_the_daemon_log(control):
    pid = control.started()
    result = control.run("logs")
    assert result.returncode == 0, result.stderr
    started = [line for line in result.stdout.splitlines() if "daemon_started" in line]
    assert started and f"pid={pid}" in started[-1]
    log_file = control.var_dir / "logs" / "daemon.log"
    before = log_file.read_text().splitlines()
    one = control.run("logs", "-n", "1", "--raw")
    assert len(one.stdout.splitlines()) == 1
    # The daemon may log meanwhile (a loop stall while litellm loads): the line shown was the
    # last one at some moment between the two reads.
    after = log_file.read_text().splitlines()
    assert one.stdout.splitlines()[0] in after[len(before) - 1:]
    assert "event" in orjson.loads(one.stdout)


def test_logs_follow_prints_lines_as_the_daemon_writes_them(control):
    control.started()
    follower = control.popen("logs", "-f", "-n", "1")

    def read_until(text: bytes, seen: bytes = b"") -> bytes:
        deadline = time.monotonic() + 30
        while text not in seen and time.monotonic() < deadline:
            ready, _, _ = select.select([follower.stdout], [], [], 1.0)
            if ready:
                seen += os.read(follower.stdout.fileno(), 65536)
        return seen

    try:
        first = read_until(b"\n")  # the last line so far: the follower has the file open
        assert b"daemon_stopping" not in first
        assert control.run("stop").returncode == 0
        seen = read_until(b"daemon_stopped", first)
        assert b"daemon_stopping" in seen and b"daemon_stopped" in seen
    finally:
        follower.send_signal(signal.SIGINT)
        assert follower.wait(10) == 0


def test_logs_audit_exports_the_state_audit(control):
    control.started()
    control.request("state:set", {"namespace": "notes", "key": "k", "value": 1},)
    control.request("agent:inbox", {"agent_id": "a", "message_id": "m", "content": "forged"})
    control.request("state:audit", {})  # answered once the refusal's row is committed
    shown = control.run("logs", "--audit")
    raw = control.run("logs", "--audit", "--raw", "-n", "1")
    assert shown.returncode == 0 and raw.returncode == 0, shown.stderr + raw.stderr
    lines = shown.stdout.splitlines()
    assert "set" in lines[0] and "notes:k v1" in lines[0] and f"uid={os.getuid()}" in lines[0]
    assert "refused" in lines[1] and "agent:inbox (agent:inbox is internal" in lines[1]
    [last] = [orjson.loads(line) for line in raw.stdout.splitlines()]
    assert last["op"] == "refused" and last["event"] == "agent:inbox"
    assert last["peer_uid"] == os.getuid()


def test_logs_without_a_log_file_fail_with_a_reason(control):
    result = control.run("logs")
    assert result.returncode == 1
    assert "no log file" in result.stderr


def test_stop_ends_the_daemon_and_removes_its_socket(control):
    pid = control.started()
    result = control.run("stop")
    assert result.returncode == 0, result.stderr
    assert f"KSI stopped (pid {pid})" in result.stdout
    assert not is_running(pid)
    assert not control.socket_path.exists()
    assert not (control.var_dir / "run" / "daemon.pid").exists()
    assert control.run("status").returncode == 3


def test_stop_when_nothing_runs_says_so_and_succeeds(control):
    result = control.run("stop")
    assert result.returncode == 0
    assert "not running" in result.stdout


def test_status_and_health_when_nothing_runs(control):
    status = control.run("status")
    assert status.returncode == 3
    assert "not running" in status.stdout
    report = orjson.loads(control.run("status", "--json").stdout)
    assert report == {"running": False, "socket": str(control.socket_path), "pid": None,
                      "reason": report["reason"]}
    health = control.run("health")
    assert health.returncode == 1
    assert "not running" in health.stderr and str(control.socket_path) in health.stderr


def test_restart_replaces_the_daemon_with_a_new_process(control):
    old_pid = control.started()
    result = control.run("restart")
    assert result.returncode == 0, result.stderr
    new_pid = control.request("system:health")["data"]["pid"]
    assert new_pid != old_pid
    assert not is_running(old_pid)
    assert f"pid {new_pid}" in result.stdout


def test_a_killed_daemon_is_reported_and_start_works_again(control):
    pid = control.started()
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while is_running(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    status = control.run("status")
    assert status.returncode == 1
    assert f"names pid {pid}" in status.stdout
    assert control.socket_path.exists()  # the dead daemon's socket is still there
    assert control.started() != pid


def test_socket_option_points_every_verb_at_another_socket(control):
    other = control.workdir / "other.sock"
    result = control.run("start", "--socket", str(other))
    assert result.returncode == 0, result.stderr
    if (Path(__file__).resolve().parent.parent / "interfaces" / "chat.py").exists():
        assert f"KSI_SOCKET_PATH={other} " in result.stdout  # clients would not find it alone
    pid = orjson.loads(control.run("status", "--json", "--socket", str(other)).stdout)["pid"]
    with LineClient(other) as client:
        assert client.request("system:health")["data"]["pid"] == pid
    assert control.run("health").returncode == 1  # nothing on the default socket
    assert control.run("stop", "--socket", str(other)).returncode == 0
    assert not is_running(pid) and not other.exists()


def test_start_with_an_invalid_config_value_fails_and_names_the_key(control):
    config = control.workdir / "daemon.json"
    config.write_bytes(orjson.dumps({"daemon": {"event_timeout": "soon"}}))
    result = control.run("start", "--config", str(config))
    assert result.returncode != 0
    assert "daemon.event_timeout" in result.stderr
    assert str(config) in result.stderr
    assert not control.socket_path.exists()
    assert control.leftover_processes() == []


def test_stop_escalates_to_sigkill_when_the_daemon_ignores_shutdown_and_sigterm(control):
    # Nothing can end the waits but their end: a short grace (5 s by default) for each step.
    config = orjson.loads((control.workdir / ".ksi" / "daemon.json").read_bytes())
    config["daemon"] = {"stop_grace_s": 1.0}
    (control.workdir / ".ksi" / "daemon.json").write_bytes(orjson.dumps(config))
    stubborn = subprocess.Popen([sys.executable, "-c", STUBBORN_DAEMON,
                                 str(control.socket_path)], env=control.env)
    try:
        deadline = time.monotonic() + 30
        while not control.socket_path.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        result = control.run("stop", "--timeout", "0")
        assert result.returncode == 0, result.stderr
        assert "Asked KSI" in result.stdout and "waiting up to 1 s" in result.stdout
        assert "SIGTERM" in result.stdout and "SIGKILL" in result.stdout
        assert stubborn.wait(10) == -signal.SIGKILL
        assert not control.socket_path.exists()  # the stale socket was cleaned up
        assert control.run("status").returncode == 3
    finally:
        if stubborn.poll() is None:
            stubborn.kill()
            stubborn.wait()


def test_migrate_state_imports_an_old_store_the_daemon_then_serves(control):
    old = control.workdir / "old.db"
    with sqlite3.connect(old) as db:
        db.execute("CREATE TABLE agent_shared_state (key TEXT, value TEXT, namespace TEXT)")
        db.execute("INSERT INTO agent_shared_state VALUES ('greeting', '\"hello\"', 'global')")
    db.close()
    result = control.run("migrate-state", "--from", str(old))
    assert result.returncode == 0, result.stderr
    control.started()
    reply = control.request("state:get", {"key": "greeting", "namespace": "global"})
    assert reply["data"]["found"] is True and reply["data"]["value"] == "hello"


def test_migrate_state_without_the_migration_module_exits_2_with_a_reason(control):
    hide_module = ("import sys; sys.modules['ksi_daemon.plugins.state.migrate'] = None; "
                   "from ksi_daemon.control import main; "
                   "sys.exit(main(['migrate-state', '--from', 'old.db']))")
    result = subprocess.run([sys.executable, "-c", hide_module], cwd=control.workdir,
                            env=control.env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "state migration is not available" in result.stderr


def test_the_control_command_never_imports_litellm(control):
    probe = ("import sys; from ksi_daemon import control; "
             "control.main(['status']); print('litellm' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", probe], cwd=control.workdir,
                            env=control.env, capture_output=True, text=True, timeout=60)
    assert result.stdout.splitlines()[-1] == "False"
