"""What the benchmark scripts share: a daemon in a temporary directory, and a blocking socket.

    proc, path = start_daemon(workdir, {"plugins": {...}})   # waits until it answers health
    conn = Connection(path)
    conn.ask("system:health")                                # the reply's data, or SystemExit
    wait_until_litellm_loaded(conn)                          # background start-up work done
    stop(proc)
    server, api_base = start_fake_server()                   # tests/fake_openai_server.py

Benchmarks measure; they do not recover. Any error reply ends the script with the reply shown.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ksi_daemon.launcher import wait_until_healthy  # noqa: E402

PYTHON = sys.executable
DAEMON_ENV = {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_MODE": "PRODUCTION",
              "HF_HUB_OFFLINE": "1", "NO_COLOR": "1"}


def start_daemon(workdir: Path, settings: dict | None = None, *,
                 preexec_fn: Callable[[], None] | None = None) -> tuple[subprocess.Popen, str]:
    """A daemon with `settings` as its config file (logging at WARNING unless they say)."""
    settings = settings or {}
    settings.setdefault("daemon", {}).setdefault("log_level", "WARNING")
    config = workdir / "daemon.json"
    config.write_bytes(orjson.dumps(settings))
    var_dir = workdir / "var"
    env = {**os.environ, **DAEMON_ENV, "KSI_VAR_DIR": str(var_dir), "HOME": str(workdir)}
    env.pop("KSI_SOCKET_PATH", None)
    with open(workdir / "daemon.out", "wb") as log:
        proc = subprocess.Popen([PYTHON, "-m", "ksi_daemon", "--foreground", "--config",
                                 str(config)], cwd=workdir, env=env, stdout=log,
                                stderr=subprocess.STDOUT, preexec_fn=preexec_fn)
    path = str(var_dir / "run" / "daemon.sock")
    if wait_until_healthy(path, proc, timeout=30) is None:
        proc.kill()
        raise SystemExit((workdir / "daemon.out").read_text(errors="replace"))
    return proc, path


def start_fake_server() -> tuple[subprocess.Popen, str]:
    """tests/fake_openai_server.py in its own process: (the process, its api_base)."""
    process = subprocess.Popen([PYTHON, str(ROOT / "tests" / "fake_openai_server.py")],
                               stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
    api_base = process.stdout.readline().decode().strip()
    if not api_base.startswith("http"):
        process.kill()
        raise RuntimeError("the fake OpenAI server did not start")
    return process, api_base


def stop_fake_server(process: subprocess.Popen) -> None:
    process.terminate()
    process.wait(10)


def stop(proc: subprocess.Popen, timeout_s: float = 20.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Connection:
    """One socket speaking the wire protocol; replies read in order, pushes skipped or awaited."""

    def __init__(self, path: str, timeout_s: float = 120.0):
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(timeout_s)
        self.sock.connect(path)
        self.buffer = b""

    def send(self, event: str, data: dict | None = None) -> None:
        self.sock.sendall(orjson.dumps({"event": event, "data": data or {}}) + b"\n")

    def next_message(self) -> dict:
        while b"\n" not in self.buffer:
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise SystemExit("the daemon closed the connection")
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return orjson.loads(line)

    def reply(self) -> dict:
        while (message := self.next_message())["type"] != "reply":
            pass
        if "error" in message:
            raise SystemExit(f"{message['event']} failed: {message['error']}")
        return message["data"]

    def ask(self, event: str, data: dict | None = None) -> dict:
        self.send(event, data)
        return self.reply()

    def pipelined(self, event: str, payloads: list[dict], batch: int = 100) -> None:
        for start in range(0, len(payloads), batch):
            chunk = payloads[start:start + batch]
            for payload in chunk:
                self.send(event, payload)
            for _ in chunk:
                self.reply()

    def wait_for(self, event: str) -> dict:
        """The data of the next push named `event` (other pushes are skipped)."""
        while (message := self.next_message())["type"] != "event" \
                or message["event"] != event:
            pass
        return message["data"]


def wait_until_litellm_loaded(conn: Connection, timeout_s: float = 60.0) -> None:
    """The completion plugin imports litellm in the background at start: wait it out, so the
    measured load does not share the CPU with it."""
    deadline = time.monotonic() + timeout_s
    while not conn.ask("completion:status").get("litellm_ready"):
        if time.monotonic() > deadline:
            raise SystemExit(f"litellm did not load within {timeout_s:g} s")
        time.sleep(0.2)
