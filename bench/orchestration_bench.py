"""What orchestration costs per turn, against the same conversation driven by hand.

    python bench/orchestration_bench.py [--rounds 20 --runs 5]

One daemon (every installed plugin with its defaults, the offline model, in a temporary
directory) is started and left until litellm is loaded. Then, alternating which goes first:

- **orchestration**: `orchestration:start {mode: debate, rounds}` and wait for
  `orchestration:finished` (timed from sending the start to the finished push: spawning two
  agents, 2 x rounds turns, terminating them);
- **baseline**: the same conversation driven by a client over the same socket: spawn two
  debater agents, send each the previous reply with `agent:send {wait: true}`, 2 x rounds times,
  terminate them.

Both make the same completions on the same model; the difference is the orchestration plugin
(and, for the baseline, one socket round trip per turn). The table shows each run, the medians
in ms per turn, and the median of per-run ratios (orchestration / baseline). The daemon is
stopped before the script exits.
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
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ksi_daemon.launcher import wait_until_healthy  # noqa: E402

DAEMON_ENV = {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_MODE": "PRODUCTION",
              "HF_HUB_OFFLINE": "1", "NO_COLOR": "1"}


class Connection:
    def __init__(self, path: str):
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(120)
        self.sock.connect(path)
        self.buffer = b""

    def next_message(self) -> dict:
        while b"\n" not in self.buffer:
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise SystemExit("the daemon closed the connection")
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return orjson.loads(line)

    def ask(self, event: str, data: dict | None = None) -> dict:
        self.sock.sendall(orjson.dumps({"event": event, "data": data or {}}) + b"\n")
        while (message := self.next_message())["type"] != "reply":
            pass
        if "error" in message:
            raise SystemExit(f"{event} failed: {message['error']}")
        return message["data"]

    def wait_for(self, event: str) -> dict:
        while (message := self.next_message()).get("event") != event \
                or message["type"] != "event":
            pass
        return message["data"]


def start_daemon(workdir: Path) -> tuple[subprocess.Popen, str]:
    config = workdir / "daemon.json"
    config.write_bytes(orjson.dumps({"daemon": {"log_level": "WARNING"}}))
    env = {**os.environ, **DAEMON_ENV, "KSI_VAR_DIR": str(workdir / "var"),
           "HOME": str(workdir)}
    env.pop("KSI_SOCKET_PATH", None)
    proc = subprocess.Popen([sys.executable, "-m", "ksi_daemon", "--foreground", "--config",
                             str(config)], cwd=ROOT, env=env,
                            stdout=open(workdir / "daemon.out", "wb"), stderr=subprocess.STDOUT)
    path = str(workdir / "var" / "run" / "daemon.sock")
    if wait_until_healthy(path, proc, timeout=30) is None:
        proc.kill()
        raise SystemExit((workdir / "daemon.out").read_text(errors="replace"))
    return proc, path


def orchestrated(conn: Connection, rounds: int) -> float:
    started = time.perf_counter()
    conn.ask("orchestration:start", {"mode": "debate", "topic": "Is P=NP?", "rounds": rounds})
    finished = conn.wait_for("orchestration:finished")
    elapsed = time.perf_counter() - started
    assert finished["status"] == "finished", finished
    return elapsed


def by_hand(conn: Connection, rounds: int) -> float:
    started = time.perf_counter()
    agents = [conn.ask("agent:spawn", {"profile": "debater", "max_turns": rounds + 1})["agent_id"]
              for _ in range(2)]
    heard, sender = "Is P=NP?\n\nArgue for the motion.", None
    for _ in range(rounds):
        for agent_id in agents:
            send = {"agent_id": agent_id, "content": heard, "wait": True}
            if sender:
                send["sender"] = sender
            heard, sender = conn.ask("agent:send", send)["reply"]["text"], agent_id
    for agent_id in agents:
        conn.ask("agent:terminate", {"agent_id": agent_id})
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    turns = 2 * args.rounds
    with tempfile.TemporaryDirectory(prefix="ksi-orch-bench-", dir="/tmp") as tmp:
        proc, path = start_daemon(Path(tmp))
        try:
            conn = Connection(path)
            while not conn.ask("completion:status").get("litellm_ready"):
                time.sleep(0.2)
            orchestrated(conn, 2)  # warm-up: first completions, first SQLite writes
            by_hand(conn, 2)
            rows = []
            for run in range(args.runs):
                first, second = (orchestrated, by_hand) if run % 2 == 0 else \
                    (by_hand, orchestrated)
                timed = {first.__name__: first(conn, args.rounds),
                         second.__name__: second(conn, args.rounds)}
                rows.append((timed["orchestrated"] / turns * 1000,
                             timed["by_hand"] / turns * 1000))
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
    print(f"debate, offline model, {args.rounds} rounds ({turns} turns) per run, "
          f"{args.runs} runs")
    print(f"{'run':>4} {'orchestration ms/turn':>22} {'by hand ms/turn':>16} {'ratio':>6}")
    for run, (orch, hand) in enumerate(rows, 1):
        print(f"{run:>4} {orch:>22.2f} {hand:>16.2f} {orch / hand:>6.2f}")
    print(f"{'median':>4} {statistics.median(r[0] for r in rows):>22.2f} "
          f"{statistics.median(r[1] for r in rows):>16.2f} "
          f"{statistics.median(r[0] / r[1] for r in rows):>6.2f}")


if __name__ == "__main__":
    main()
