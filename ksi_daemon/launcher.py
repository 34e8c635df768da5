"""Start the daemon in the background and wait until it answers, or say why it did not."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import orjson

from .private_files import owner_only

READY_TIMEOUT_S = 30.0


def ask(socket_path: str, event: str, data: dict | None = None, timeout: float = 2.0) -> dict:
    """One request over a fresh connection; returns the reply envelope. Raises OSError."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(socket_path)
        sock.sendall(orjson.dumps({"event": event, "data": data or {}}) + b"\n")
        buffer = b""
        while not buffer.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("the daemon closed the connection without a reply")
            buffer += chunk
    return orjson.loads(buffer)


def wait_until_healthy(socket_path: str, process: subprocess.Popen | None,
                       timeout: float = READY_TIMEOUT_S) -> dict | None:
    """The health reply once the socket answers; None if the process died or time ran out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            return None
        try:
            reply = ask(socket_path, "system:health", timeout=1.0)
            if "data" in reply:
                return reply["data"]
        except (OSError, ValueError):
            pass
        time.sleep(0.02)
    return None


def start_in_background(config: dict, argv: list[str]) -> int:
    settings = config["daemon"]
    log_dir = Path(settings["var_dir"]) / "logs"
    out_path = log_dir / "daemon.out"
    with owner_only():  # var/ is private (private_files.py): the daemon's output too
        log_dir.mkdir(parents=True, exist_ok=True)
        out = open(out_path, "ab")
    with out:
        start_offset = out.tell()
        process = subprocess.Popen(
            [sys.executable, "-m", "ksi_daemon", "--foreground", *argv],
            stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True,
            env={**os.environ, "NO_COLOR": "1"})
    health = wait_until_healthy(settings["socket_path"], process)
    if health is None:
        timed_out = process.poll() is None
        if timed_out:
            stop_unresponsive(process)
        with open(out_path, "rb") as out:
            out.seek(start_offset)
            reason = out.read().decode(errors="replace").strip()
        why = f" (no answer to system:health within {READY_TIMEOUT_S:g} s; stopped it)" \
            if timed_out else ""
        print(f"ksi: the daemon did not start{why}:\n{reason or '(no output)'}",
              file=sys.stderr)
        return 1 if timed_out else process.returncode or 1
    failed = health.get("failed_plugins") or []
    but = f" but {len(failed)} plugin{'s' if len(failed) != 1 else ''} failed" if failed else ""
    print(f"KSI daemon running{but}: pid {health['pid']}, socket {settings['socket_path']}")
    for line in failed_plugin_lines(failed):
        print(f"ksi: {line}", file=sys.stderr)
    return 0


def failed_plugin_lines(failed: list[dict]) -> list[str]:
    """One line per failed plugin of a health reply: its name, why, and where it arose."""
    return [f"plugin {plugin.get('plugin')} failed: {plugin.get('error')} "
            f"(at {plugin.get('where')})" for plugin in failed]


def stop_unresponsive(process: subprocess.Popen, grace_s: float = 5.0) -> None:
    # A daemon stuck before its event loop runs ignores SIGTERM; it must not keep the lock.
    process.terminate()
    try:
        process.wait(grace_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
