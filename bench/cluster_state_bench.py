"""Cluster state benchmark: `state:set` and `state:get` on a cluster node against the single
daemon, in the same run, and how soon a write on one node is seen on another.

    .venv/bin/python bench/cluster_state_bench.py [--rounds 7 --duration 1.0 --latency-calls 300]

Starts one nats-server (the venv's, loopback, JetStream with `sync_interval: always`, as the
tests and `cluster-dev` run it, or `--sync-interval 2m`, nats-server's default), one single daemon (no NATS) and two cluster nodes A and B, each
a subprocess in its own var dir. Then:

1. Sequential latency: `--latency-calls` `state:set`s one after another from one connection,
   on the single daemon and on node A, alternating in blocks of 10; medians. A cluster write is
   answered after JetStream acknowledged it (a round trip to nats-server and its fsync).
2. Throughput: the C load generator (bench/loadgen.c), 16 connections × 1 in flight, each on
   its own key, for
   `--duration` s per window, on the single daemon, on node A, and on A and B at once (two load
   generators, the sum of both), for `state:set` and then `state:get`; each round runs the
   windows in a rotating order; medians of the per-round ratios to the single daemon.
3. Visibility across nodes: a connection on node B subscribed to `state:changed`; `state:set`
   of a new value on A, one after another; the time from A's reply to B's `state:changed` push
   for that version (both measured in this process). Medians and p99.

Every process started here is stopped before the script exits. Nothing is asserted about speed;
the script prints what it measured.
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

from bench_daemon import Connection, start_daemon, stop
from compiled_loadgen import compiled_loadgen

from ksi_daemon.control.local_nats import start_nats_server, stop_nats_server

CONNECTIONS = 16
KEY = {"namespace": "bench", "key": "k"}  # the sequential calls' key
# Under load each connection writes and reads its own key (the load generator adds "key"): a
# node orders the writes of one key, so 16 connections on one key would be one queue.
LOADED = {"namespace": "bench"}


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def sequential_sets(conn: Connection, calls: int, start: int) -> list[float]:
    seconds = []
    for n in range(start, start + calls):
        began = time.perf_counter()
        conn.ask("state:set", {**KEY, "value": n})
        seconds.append(time.perf_counter() - began)
    return seconds


def measure_latency(single: Connection, node: Connection, calls: int) -> dict[str, float]:
    taken: dict[str, list[float]] = {"single daemon": [], "cluster node": []}
    for block in range(max(1, calls // 10)):
        pair = [("single daemon", single), ("cluster node", node)]
        for name, conn in pair if block % 2 == 0 else pair[::-1]:  # who goes first alternates
            taken[name] += sequential_sets(conn, 10, block * 10)
    return {name: statistics.median(values) * 1000 for name, values in taken.items()}


def load(paths: list[str], event: str, data: dict, duration: float) -> float:
    """Requests/s summed over one load generator per path, all running at once."""
    binary = str(compiled_loadgen())
    runs = [subprocess.Popen([binary, "--socket", path, "--event", event,
                              "--data", orjson.dumps(data).decode(),
                              "--connections", str(CONNECTIONS), "--depth", "1",
                              "--warmup", "0.3", "--duration", str(duration),
                              "--key-per-connection", "1"],
                             stdout=subprocess.PIPE) for path in paths]
    total = 0.0
    for run in runs:
        out, _ = run.communicate(timeout=duration + 60)
        result = orjson.loads(out)
        if result.get("errors"):
            raise SystemExit(f"{event} answered errors under load: {result}")
        total += result["rps"]
    return total


def measure_throughput(single: str, a: str, b: str, rounds: int, duration: float) -> dict:
    windows = {"single daemon": [single], "cluster node A": [a], "nodes A + B at once": [a, b]}
    results = {}
    for event, data in (("state:set", {**LOADED, "value": {"text": "payload"}}),
                        ("state:get", LOADED)):
        rps: dict[str, list[float]] = {name: [] for name in windows}
        names = list(windows)
        for i in range(rounds):
            for name in names[i % len(names):] + names[:i % len(names)]:
                rps[name].append(load(windows[name], event, data, duration))
        results[event] = {name: (statistics.median(values),
                                 statistics.median(v / s for v, s in
                                                   zip(values, rps["single daemon"])))
                          for name, values in rps.items()}
    return results


def measure_visibility(a: Connection, b_path: str, calls: int) -> list[float]:
    watcher = Connection(b_path)
    watcher.ask("system:subscribe", {"patterns": ["state:changed"]})
    seconds = []
    for n in range(calls):
        version = a.ask("state:set", {"namespace": "bench", "key": "seen", "value": n})["version"]
        replied = time.perf_counter()
        while True:
            change = watcher.wait_for("state:changed")
            if change.get("key") == "seen" and change.get("version") == version:
                break
        seconds.append(time.perf_counter() - replied)
    watcher.sock.close()
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--duration", type=float, default=1.0)
    parser.add_argument("--latency-calls", type=int, default=300)
    parser.add_argument("--sync-interval", default="always",
                        help="nats-server's JetStream sync_interval: always (fsync before every "
                             "ack, as the tests run it) or e.g. 2m (its default); see "
                             "docs/CLUSTER.md for what each survives")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="ksi-csb-", dir="/tmp"))
    nats = None
    procs = []
    try:
        nats, url = start_nats_server(workdir / "nats", sync_interval=args.sync_interval)
        print(f"nats-server with sync_interval: {args.sync_interval}")
        paths = {}
        for name, settings in (("single", {}),
                               ("node-a", {"cluster": {"nats_url": url, "node_id": "node-a"}}),
                               ("node-b", {"cluster": {"nats_url": url, "node_id": "node-b"}})):
            (workdir / name).mkdir()
            # No litellm warm-up: seconds of CPU in each daemon's background at start, which
            # would be measured as the first windows' latency.
            settings["plugins"] = {"completion": {"warm_up": False}}
            proc, paths[name] = start_daemon(workdir / name, settings)
            procs.append(proc)
        single, nodes = paths["single"], paths
        a = Connection(nodes["node-a"])
        deadline = time.monotonic() + 30
        while not a.ask("system:health").get("cluster", {}).get("jetstream"):
            if time.monotonic() > deadline:
                raise SystemExit("node A did not reach JetStream within 30 s")
            time.sleep(0.1)
        single_conn = Connection(single)
        sequential_sets(single_conn, 50, 0), sequential_sets(a, 50, 0)  # warm both up

        ms = measure_latency(single_conn, a, args.latency_calls)
        print(f"state:set, {args.latency_calls} sequential calls each (median ms):")
        for name, value in ms.items():
            print(f"  {name:<16} {value:7.3f} ms")
        print(f"  cluster / single: {ms['cluster node'] / ms['single daemon']:.2f}×")

        results = measure_throughput(single, nodes["node-a"], nodes["node-b"], args.rounds,
                                     args.duration)
        print(f"\n{CONNECTIONS} connections × 1 in flight, {args.rounds} rounds × "
              f"{args.duration:g} s (median req/s; ratio: median of per-round ratios to the "
              f"single daemon):")
        for event, by_window in results.items():
            for name, (rps, ratio) in by_window.items():
                print(f"  {event:<10} {name:<20} {rps:10.0f} req/s  {ratio:5.2f}×")

        seen = measure_visibility(a, nodes["node-b"], args.latency_calls)
        print(f"\na write on A seen on B (from A's reply read here to B's state:changed push "
              f"read here; 0 when it came first), "
              f"{len(seen)} writes: median {statistics.median(seen) * 1000:.3f} ms, "
              f"p99 {percentile(seen, 0.99) * 1000:.3f} ms")
    finally:
        for proc in procs:
            stop(proc)
        if nats is not None:
            stop_nats_server(nats.pid)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
