"""Fixtures that run the real daemon, as a subprocess over its real socket or in this process.

`daemon` / `daemon_factory`: a `DaemonProcess` (a subprocess, talked to over its socket), for
what only a process or a socket shows. `inprocess_daemon` / `inprocess_factory`: a
`ThreadedDaemon` (tests/inprocess.py: the same plugins in this process, in-memory connections),
with the same client interface, for the router's and the plugins' logic. A test (or a module,
with `pytestmark`) marked `pytest.mark.daemon("inprocess")` gets the in-process kind from
`daemon` and `daemon_factory` too, so moving it changes no line of its body;
`pytest.mark.daemon("process")` keeps one test of such a module on a process.

Every daemon a test starts has `plugins.completion.warm_up: false` unless its config says
otherwise: litellm (seconds of CPU and ~120 MB) is imported by the first completion, not by
every daemon. A test about the warm-up itself sets it.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

# Before anything can import litellm: no price-list download, no telemetry, no hub lookups.
TEST_ENV = {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_MODE": "PRODUCTION",
            "HF_HUB_OFFLINE": "1"}
os.environ.update(TEST_ENV)

import orjson  # noqa: E402
import pytest  # noqa: E402

from ksi_daemon.launcher import wait_until_healthy  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TEST_CONFIG = {"plugins": {"completion": {"warm_up": False}}}


def home_with_test_config(home: Path) -> Path:
    """`home` holding ~/.ksi/daemon.json with TEST_CONFIG: the config file a daemon reads when
    started with no --config (through daemon_control.py, as a user does), so those daemons
    skip litellm's warm-up too. What a user gets is unchanged: their HOME has no such file."""
    (home / ".ksi").mkdir(parents=True, exist_ok=True)
    (home / ".ksi" / "daemon.json").write_bytes(orjson.dumps(TEST_CONFIG))
    return home


def merge_config(base: dict, override: dict) -> dict:
    """`override` over `base`, dicts merged key by key (as a config section is)."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_config(merged[key], value)
        else:
            merged[key] = value
    return merged


def data_of(reply: dict) -> dict:
    """The reply's data, failing the test with the whole reply when it is an error."""
    assert "data" in reply, reply
    return reply["data"]


def error_of(reply: dict) -> dict:
    assert "error" in reply, reply
    return reply["error"]


class LineSpeaker:
    """Requests and replies line by line over whatever carries the lines: a subclass gives
    `send_raw`, `recv` (the next message, decoded) and `close`."""

    def send(self, event: str, data: dict | None = None, **envelope) -> None:
        message = {"event": event, **envelope}
        if data is not None:
            message["data"] = data
        self.send_raw(orjson.dumps(message) + b"\n")

    def recv_reply(self) -> dict:
        """The next reply, skipping pushes."""
        while True:
            message = self.recv()
            if message["type"] == "reply":
                return message

    def request(self, event: str, data: dict | None = None, **envelope) -> dict:
        self.send(event, data, **envelope)
        return self.recv_reply()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class LineClient(LineSpeaker):
    """A bare socket speaking the wire protocol line by line, as `nc -U` would."""

    def __init__(self, socket_path: str | Path, timeout: float = 10.0):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(str(socket_path))
        self._buffer = b""

    def settimeout(self, timeout: float) -> None:
        self.sock.settimeout(timeout)

    def send_raw(self, payload: bytes) -> None:
        self.sock.sendall(payload)

    def recv(self) -> dict:
        while b"\n" not in self._buffer:
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise ConnectionError("daemon closed the connection")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return orjson.loads(line)

    def close(self) -> None:
        self.sock.close()


def open_to_another_uid(daemon) -> None:
    """Let a process of another uid reach the daemon's socket, so the daemon's own check of
    the peer is what refuses it (root only: the test then forks and drops to nobody)."""
    if os.getuid() != 0:
        pytest.skip("needs root to connect as another uid")
    for directory in (daemon.workdir, daemon.var_dir, daemon.socket_path.parent):
        os.chmod(directory, 0o755)
    os.chmod(daemon.socket_path, 0o666)


def exit_code_as_nobody(child) -> int:
    """Fork, become uid/gid 65534 (nobody: root only) and run `child()`, whose return value is
    the exit code (an exception: 1); returns that code."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.setgid(65534)
            os.setuid(65534)
            code = child()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.WEXITSTATUS(status)


@contextlib.contextmanager
def module_daemon(config: dict, prefix: str):
    """A daemon process for a whole test module (use from a module-scoped fixture)."""
    workdir = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    daemon = DaemonProcess(workdir, config).start()
    try:
        yield daemon
    finally:
        daemon.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def rss_bytes(pid: int) -> int:
    """The resident memory of process `pid`, from /proc."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


DAEMON_STARTS = {"process": 0, "inprocess": 0}  # reported at the end of the run


def pytest_sessionfinish(session):
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:  # a pytest-xdist worker: its controller adds the counts up
        workeroutput["daemon_starts"] = dict(DAEMON_STARTS)


@pytest.hookimpl(optionalhook=True)  # a pytest-xdist hook
def pytest_testnodedown(node, error):
    for kind, count in getattr(node, "workeroutput", {}).get("daemon_starts", {}).items():
        DAEMON_STARTS[kind] += count


def pytest_terminal_summary(terminalreporter):
    terminalreporter.write_line(
        f"daemons started: {DAEMON_STARTS['process']} processes (DaemonProcess), "
        f"{DAEMON_STARTS['inprocess']} in-process")


class DaemonProcess:
    def __init__(self, workdir: Path, config: dict | None = None, env: dict | None = None,
                 args: list[str] | None = None):
        self.workdir = workdir
        self.var_dir = workdir / "var"
        self.socket_path = self.var_dir / "run" / "daemon.sock"
        self.config_path = workdir / "daemon.json"
        self.config_path.write_bytes(orjson.dumps(merge_config(TEST_CONFIG, config or {})))
        self.env = {**os.environ, **TEST_ENV, "HOME": str(workdir), "KSI_VAR_DIR": str(self.var_dir),
                    "PYTHONPATH": str(ROOT), **(env or {})}
        self.env.pop("KSI_SOCKET_PATH", None)
        self.args = args or []
        self.proc: subprocess.Popen | None = None

    def start(self, wait: bool = True) -> "DaemonProcess":
        DAEMON_STARTS["process"] += 1
        self.output = open(self.workdir / "daemon.out", "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ksi_daemon", "--foreground", "--config",
             str(self.config_path), *self.args],
            cwd=self.workdir, env=self.env, stdout=self.output, stderr=subprocess.STDOUT)
        if wait and wait_until_healthy(str(self.socket_path), self.proc, timeout=30) is None:
            raise RuntimeError(f"daemon did not start:\n{self.read_output()}")
        return self

    def read_output(self) -> str:
        return (self.workdir / "daemon.out").read_text(errors="replace")

    def client(self, timeout: float = 10.0) -> LineClient:
        return LineClient(self.socket_path, timeout)

    def request(self, event: str, data: dict | None = None) -> dict:
        with self.client() as client:
            return client.request(event, data)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"daemon ignored signal {sig} for {timeout} s")
        finally:
            self.output.close()

    def wait(self, timeout: float = 20.0) -> int:
        return self.proc.wait(timeout)


@pytest.fixture
def workdir():
    # Short path under /tmp: a Unix socket path may not exceed 107 bytes.
    path = Path(tempfile.mkdtemp(prefix="ksi-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def runs_in_process(request) -> bool:
    """True under `@pytest.mark.daemon("inprocess")` (on the test, its class or its module;
    the closest wins, so `@pytest.mark.daemon("process")` keeps one test on a process)."""
    marker = request.node.get_closest_marker("daemon")
    kind = marker.args[0] if marker is not None and marker.args else "process"
    if kind not in ("process", "inprocess"):
        raise ValueError(f"pytest.mark.daemon({kind!r}): 'process' or 'inprocess'")
    return kind == "inprocess"


@pytest.fixture
def daemon_factory(request, workdir):
    """Start daemons: processes, or in-process ones under `pytest.mark.daemon("inprocess")`."""
    if runs_in_process(request):
        inprocess = request.getfixturevalue("inprocess_factory")

        def start_in_process(config: dict | None = None, env: dict | None = None, args=None,
                             wait=True, subdir: str | None = None):
            if env or not wait:
                raise ValueError("env and wait=False need a daemon process: mark the test "
                                 "pytest.mark.daemon('process')")
            return inprocess(config, subdir=subdir, args=args)

        yield start_in_process
        return
    started: list[DaemonProcess] = []

    def start(config: dict | None = None, env: dict | None = None, args=None, wait=True,
              subdir: str | None = None) -> DaemonProcess:
        directory = workdir / subdir if subdir else workdir
        directory.mkdir(exist_ok=True)
        daemon = DaemonProcess(directory, config, env, args)
        started.append(daemon)
        return daemon.start(wait=wait)

    yield start
    for daemon in started:
        if daemon.proc is not None and daemon.proc.poll() is None:
            daemon.proc.kill()
            daemon.proc.wait()


@pytest.fixture
def daemon(daemon_factory) -> DaemonProcess:
    return daemon_factory()


@pytest.fixture
def inprocess_factory(workdir):
    """Start ThreadedDaemons (the daemon in this process); all are stopped after the test."""
    from inprocess import ThreadedDaemon
    started: list[ThreadedDaemon] = []

    def start(config: dict | None = None, subdir: str | None = None,
              args: list[str] | None = None) -> ThreadedDaemon:
        directory = workdir / subdir if subdir else workdir
        directory.mkdir(exist_ok=True)
        daemon = ThreadedDaemon(directory, config, args)
        started.append(daemon)
        return daemon.start()

    yield start
    for daemon in started:
        daemon.stop()


@pytest.fixture
def inprocess_daemon(inprocess_factory):
    return inprocess_factory()


@pytest.fixture
def fake_openai():
    """tests/fake_openai_server.py in a thread for one test (a module may define its own)."""
    from fake_openai_server import FakeOpenAIServer
    with FakeOpenAIServer() as server:
        yield server


def run_python_blocks(blocks: list[str], socket_path, workdir: Path, name: str) -> list[str]:
    """Run each code block of a document as its own script against the daemon on
    `socket_path`; fail with the block and its stderr; return what each printed."""
    env = {**os.environ, **TEST_ENV, "KSI_SOCKET_PATH": str(socket_path),
           "PYTHONPATH": str(ROOT)}
    printed = []
    for number, code in enumerate(blocks, 1):
        script = workdir / f"{name}_block_{number}.py"
        script.write_text(code, encoding="utf-8")
        result = subprocess.run([sys.executable, str(script)], cwd=workdir, env=env,
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, f"{name} block {number}:\n{code}\n{result.stderr}"
        printed.append(result.stdout)
    return printed


class LocalNats:
    """A nats-server of the test's own: loopback, a free port, JetStream with
    `sync_interval: always`, its data in the test's directory (kept across `restart`)."""

    def __init__(self, directory: Path):
        from ksi_daemon.control.local_nats import free_loopback_port
        self.directory, self.port = directory, free_loopback_port()
        self.process = None
        self.url = f"nats://127.0.0.1:{self.port}"

    def start(self) -> "LocalNats":
        from ksi_daemon.control.local_nats import start_nats_server
        self.process, _url = start_nats_server(self.directory, self.port,
                                               log_file=self.directory / "nats-server.log")
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def restart(self) -> None:
        self.stop()
        self.start()


@pytest.fixture
def nats_server(workdir):
    server = LocalNats(workdir / "nats").start()
    yield server
    server.stop()
