"""agent:send across nodes against the single daemon, in one run: latency and throughput.

    python bench/cluster_agents_bench.py [--messages 200 --senders 8 --runs 3]

Starts a loopback nats-server (JetStream, `sync_interval: always`, as in the tests) and two
cluster nodes, A and B, plus a single daemon with no NATS, each in a temporary directory with
the offline model. Then, per run:

- latency: `--messages` sequential `agent:send {wait: true}`, one at a time, to an agent of the
  single daemon, to an agent of A from A (same node: the fenced checkpoints in KV and the turns
  on the conversation stream) and to an agent of A from B (cross-node: the request forwarded
  over NATS, the reply back); a fresh agent for each, so their conversations grow alike;
- throughput: `--senders` connections, each sending `--messages` / `--senders` messages with
  wait, to the same three targets; messages per second.

Prints each run and the medians, and the ratios against the single daemon. It measures; it
does not judge (no targets here: numbers depend on the machine; bench/RESULTS.md is written by
hand from quiet-machine runs). Every process started here is stopped before the script exits.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench_daemon import ROOT, Connection, start_daemon, stop, wait_until_litellm_loaded

sys.path.insert(0, str(ROOT))
from ksi_daemon.control.local_nats import free_loopback_port, start_nats_server  # noqa: E402


def start_node(workdir: Path, nats_url: str, node_id: str):
    """A cluster node: the environment names the cluster, as `daemon_control.py` would."""
    os.environ["KSI_CLUSTER_NATS_URL"], os.environ["KSI_NODE_ID"] = nats_url, node_id
    try:
        proc, path = start_daemon(workdir)
    finally:
        del os.environ["KSI_CLUSTER_NATS_URL"], os.environ["KSI_NODE_ID"]
    conn = Connection(path)
    deadline = time.monotonic() + 30
    while not conn.ask("system:health").get("cluster", {}).get("jetstream"):
        if time.monotonic() > deadline:
            raise SystemExit(f"{node_id} did not reach JetStream")
        time.sleep(0.1)
    return proc, path


def send_wait(conn: Connection, agent_id: str, number: int) -> None:
    conn.ask("agent:send", {"agent_id": agent_id, "content": f"message {number}",
                            "wait": True, "timeout_s": 60})


def latency_ms(path: str, agent_id: str, messages: int) -> float:
    conn = Connection(path)
    times = []
    for number in range(messages):
        started = time.perf_counter()
        send_wait(conn, agent_id, number)
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def throughput(path: str, agent_id: str, messages: int, senders: int) -> float:
    each = max(1, messages // senders)
    conns = [Connection(path) for _ in range(senders)]

    def sender(conn: Connection) -> None:
        for number in range(each):
            send_wait(conn, agent_id, number)
    threads = [threading.Thread(target=sender, args=(conn,)) for conn in conns]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return each * senders / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=200)
    parser.add_argument("--senders", type=int, default=8)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    procs = []
    with tempfile.TemporaryDirectory(prefix="ksi-cluster-agents-bench-", dir="/tmp") as tmp:
        tmp = Path(tmp)
        for name in ("nats", "single", "node-a", "node-b"):
            (tmp / name).mkdir()
        nats, nats_url = start_nats_server(tmp / "nats", free_loopback_port(),
                                           log_file=tmp / "nats" / "nats-server.log")
        try:
            single, single_path = start_daemon(tmp / "single")
            procs.append(single)
            node_a, a_path = start_node(tmp / "node-a", nats_url, "node-a")
            procs.append(node_a)
            node_b, b_path = start_node(tmp / "node-b", nats_url, "node-b")
            procs.append(node_b)
            for path in (single_path, a_path, b_path):
                wait_until_litellm_loaded(Connection(path))
            # (where the agent lives, where the sender asks)
            targets = {"single daemon": (single_path, single_path),
                       "cluster, same node": (a_path, a_path),
                       "cluster, cross-node": (a_path, b_path)}
            rows = {name: {"latency": [], "throughput": []} for name in targets}
            for run in range(1, args.runs + 1):
                for number, (name, (home, asker)) in enumerate(targets.items()):
                    # A fresh agent per measurement: its conversation, sent to the model with
                    # each turn, grows alike for every target.
                    agent_id = f"bench-{run}-{number}"
                    Connection(home).ask("agent:spawn", {"agent_id": agent_id,
                                                         "max_turns": 100_000})
                    send_wait(Connection(asker), agent_id, -1)  # warm this path up
                    rows[name]["latency"].append(latency_ms(asker, agent_id, args.messages))
                    rows[name]["throughput"].append(
                        throughput(asker, agent_id, args.messages, args.senders))
                    Connection(home).ask("agent:terminate", {"agent_id": agent_id})
                    print(f"run {run}  {name:<20} latency p50 {rows[name]['latency'][-1]:7.2f}"
                          f" ms   throughput {rows[name]['throughput'][-1]:8.1f} msg/s")
            print()
            base_latency = statistics.median(rows["single daemon"]["latency"])
            base_throughput = statistics.median(rows["single daemon"]["throughput"])
            print(f"{'median':<22}{'latency ms':>12}{'x single':>10}{'msg/s':>10}{'x single':>10}")
            for name, row in rows.items():
                latency, rate = statistics.median(row["latency"]), \
                    statistics.median(row["throughput"])
                print(f"{name:<22}{latency:12.2f}{latency / base_latency:10.2f}"
                      f"{rate:10.1f}{rate / base_throughput:10.2f}")
        finally:
            for proc in procs:
                stop(proc)
            nats.terminate()
            nats.wait(10)


if __name__ == "__main__":
    main()
