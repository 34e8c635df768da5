"""Memory of idle agents: RSS growth of the daemon for 1,000 agents that wait for messages.

    python bench/agent_bench.py [--agents 1000 --runs 3 --settle 1.0]

Each run starts a fresh daemon (every installed plugin with its defaults, in a temporary
directory), waits until litellm is loaded (completion:status litellm_ready: the biggest import,
done in the background after start, must not count as agents' memory) and the RSS reported by
system:metrics stops moving, reads it (the baseline), spawns the agents over one connection
(pipelined, 100 at a time; each is a supervised task with an empty inbox and a row in
agents.db), waits `--settle` seconds, reads RSS again, terminates them all and reads it a third
time. The table shows each run and the medians; growth = after spawning - baseline (target
< 50 MB). Every daemon started here is stopped before the script exits.
"""
from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ksi_daemon.launcher import wait_until_healthy  # noqa: E402

PYTHON = sys.executable
DAEMON_ENV = {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_MODE": "PRODUCTION",
              "HF_HUB_OFFLINE": "1", "NO_COLOR": "1"}
TARGET_MB = 50.0
MB = 1024 * 1024


class Connection:
    """One socket speaking the wire protocol, reading replies in order."""

    def __init__(self, path: str):
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(60)
        self.sock.connect(path)
        self.buffer = b""

    def send(self, event: str, data: dict) -> None:
        self.sock.sendall(orjson.dumps({"event": event, "data": data}) + b"\n")

    def reply(self) -> dict:
        while True:
            while b"\n" not in self.buffer:
                chunk = self.sock.recv(1 << 20)
                if not chunk:
                    raise SystemExit("the daemon closed the connection")
                self.buffer += chunk
            line, self.buffer = self.buffer.split(b"\n", 1)
            message = orjson.loads(line)
            if message["type"] == "reply":
                if "error" in message:
                    raise SystemExit(f"{message['event']} failed: {message['error']}")
                return message["data"]

    def ask(self, event: str, data: dict | None = None) -> dict:
        self.send(event, data or {})
        return self.reply()

    def pipelined(self, event: str, payloads: list[dict], batch: int = 100) -> None:
        for start in range(0, len(payloads), batch):
            chunk = payloads[start:start + batch]
            for payload in chunk:
                self.send(event, payload)
            for _ in chunk:
                self.reply()


def start_daemon(workdir: Path) -> tuple[subprocess.Popen, str]:
    config = workdir / "daemon.json"
    config.write_bytes(orjson.dumps({"daemon": {"log_level": "WARNING"}}))
    env = {**os.environ, **DAEMON_ENV, "KSI_VAR_DIR": str(workdir / "var"),
           "HOME": str(workdir)}
    env.pop("KSI_SOCKET_PATH", None)
    log = open(workdir / "daemon.out", "wb")
    proc = subprocess.Popen([PYTHON, "-m", "ksi_daemon", "--foreground", "--config",
                             str(config)], cwd=ROOT, env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    path = str(workdir / "var" / "run" / "daemon.sock")
    if wait_until_healthy(path, proc, timeout=30) is None:
        proc.kill()
        raise SystemExit((workdir / "daemon.out").read_text(errors="replace"))
    return proc, path


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def steady_rss(conn: Connection, timeout_s: float = 60.0) -> int:
    """RSS once two readings half a second apart differ by less than 256 KiB."""
    deadline = time.monotonic() + timeout_s
    last = conn.ask("system:metrics")["rss_bytes"]
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = conn.ask("system:metrics")["rss_bytes"]
        if abs(now - last) < 256 * 1024:
            return now
        last = now
    return last


def one_run(agents: int, settle_s: float) -> dict:
    with tempfile.TemporaryDirectory(prefix="ksi-agent-bench-", dir="/tmp") as tmp:
        proc, path = start_daemon(Path(tmp))
        try:
            conn = Connection(path)
            deadline = time.monotonic() + 60
            while not conn.ask("completion:status").get("litellm_ready"):
                if time.monotonic() > deadline:
                    raise SystemExit("litellm did not load within 60 s")
                time.sleep(0.2)
            before = steady_rss(conn)
            ids = [f"idle-{n}" for n in range(agents)]
            started = time.perf_counter()
            conn.pipelined("agent:spawn", [{"agent_id": agent_id} for agent_id in ids])
            spawn_s = time.perf_counter() - started
            time.sleep(settle_s)
            listed = conn.ask("agent:list")
            if listed["tasks_alive"] != agents:
                raise SystemExit(f"expected {agents} agent tasks, the daemon has "
                                 f"{listed['tasks_alive']}")
            after = conn.ask("system:metrics")["rss_bytes"]
            conn.pipelined("agent:terminate", [{"agent_id": agent_id} for agent_id in ids])
            time.sleep(settle_s)
            terminated = conn.ask("system:metrics")["rss_bytes"]
            tasks_left = conn.ask("agent:list")["tasks_alive"]
        finally:
            stop(proc)
    return {"before": before, "after": after, "terminated": terminated,
            "growth": after - before, "spawn_s": spawn_s, "tasks_left": tasks_left}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--settle", type=float, default=1.0)
    args = parser.parse_args()
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print(f"KSI agent memory benchmark — {when}, nproc {os.cpu_count()}, "
          f"Python {sys.version.split()[0]}")
    print(f"{args.agents} idle agents per run, fresh daemon per run, {args.runs} runs; "
          "RSS from system:metrics\n")
    print(f"{'run':>4} {'baseline MB':>12} {'spawned MB':>11} {'growth MB':>10} "
          f"{'KB/agent':>9} {'terminated MB':>14} {'spawn s':>8} {'tasks left':>11}")
    runs = []
    for n in range(1, args.runs + 1):
        run = one_run(args.agents, args.settle)
        runs.append(run)
        print(f"{n:>4} {run['before'] / MB:>12.1f} {run['after'] / MB:>11.1f} "
              f"{run['growth'] / MB:>10.2f} {run['growth'] / 1024 / args.agents:>9.2f} "
              f"{run['terminated'] / MB:>14.1f} {run['spawn_s']:>8.2f} {run['tasks_left']:>11}")
    growth = statistics.median(r["growth"] for r in runs) / MB
    baseline = statistics.median(r["before"] for r in runs) / MB
    verdict = "PASS" if growth < TARGET_MB else "FAIL"
    print(f"\nmedian baseline {baseline:.1f} MB; median growth {growth:.2f} MB for "
          f"{args.agents} agents ({growth * 1024 / args.agents:.2f} KB/agent, "
          f"{growth / baseline:.3f}× the baseline); target < {TARGET_MB:g} MB: {verdict}")


if __name__ == "__main__":
    main()
