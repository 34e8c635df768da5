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
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from bench_daemon import Connection, start_daemon, stop, wait_until_litellm_loaded

TARGET_MB = 50.0
MB = 1024 * 1024


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
            wait_until_litellm_loaded(conn)
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
