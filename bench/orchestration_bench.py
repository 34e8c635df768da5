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
import statistics
import tempfile
import time
from pathlib import Path

from bench_daemon import Connection, start_daemon, stop, wait_until_litellm_loaded


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
            wait_until_litellm_loaded(conn)
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
            stop(proc, 30)
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
