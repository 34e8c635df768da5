"""Messages across nodes: fan-out throughput and latency, two cluster nodes against one daemon.

    python bench/cluster_bench.py [--subscribers 50 --messages 2000 --rounds 5 --pings 300]

Started here, in the same run: a loopback nats-server (JetStream, `sync_interval: always`, as
the tests and `cluster-dev` run it), a single daemon with no NATS, and two cluster nodes A and
B. Rounds alternate between the set-ups:

- single: publisher and subscribers on the single daemon (messages retained in SQLite);
- local:  publisher and subscribers on node A (each message stored in the stream first);
- cross:  publisher on node A, subscribers on node B (delivered by B's feed of the stream).

Fan-out: the publisher pipelines N `message:publish` lines; deliveries/s = subscribers × N /
(first write until the last subscriber has all N). Latency: one message at a time, from the
publish's write to its arrival at one subscriber, and to the publish's reply. The script prints
medians over rounds and each set-up's ratio to the single daemon; it asserts nothing and writes
no file. Every process started here is stopped before it exits.
"""
from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import orjson
import uvloop

from bench_daemon import ROOT, start_daemon, stop
from message_bench import ROUND_TIMEOUT_S, Publisher, Subscriber, connect, publish_lines

sys.path.insert(0, str(ROOT))
from ksi_daemon.control.local_nats import start_nats_server  # noqa: E402

SUBSCRIBE = orjson.dumps({"event": "message:subscribe", "data": {"topics": ["bench"]}}) + b"\n"


async def subscribers_on(path: str, count: int) -> list[Subscriber]:
    subs = [await connect(path, Subscriber) for _ in range(count)]
    subscribed = [sub.expect(1) for sub in subs]
    for sub in subs:
        sub.transport.write(SUBSCRIBE)
    await asyncio.wait_for(asyncio.gather(*subscribed), 10)
    return subs


async def fan_out(publish_path: str, subscribe_path: str, subscribers: int, messages: int
                  ) -> dict:
    subs = await subscribers_on(subscribe_path, subscribers)
    publisher = await connect(publish_path, Publisher)
    lines = publish_lines(messages)
    arrived = [sub.expect(messages) for sub in subs]
    replies = publisher.expect(messages)
    started = time.perf_counter()
    await publisher.write_all(lines)
    done, _ = await asyncio.wait(arrived, timeout=ROUND_TIMEOUT_S * 3)
    elapsed = time.perf_counter() - started
    await asyncio.wait_for(replies, ROUND_TIMEOUT_S * 3)
    received = sum(min(sub.lines - 1, messages) for sub in subs)
    for protocol in (*subs, publisher):
        protocol.transport.close()
    await asyncio.sleep(0.05)
    return {"deliveries_per_s": received / elapsed, "complete": len(done) == len(subs)}


async def latency(publish_path: str, subscribe_path: str, pings: int) -> dict:
    """Median and 99th percentile (ms) of a message's way to a subscriber and of its reply."""
    (sub,) = await subscribers_on(subscribe_path, 1)
    publisher = await connect(publish_path, Publisher)
    line = orjson.dumps({"event": "message:publish",
                         "data": {"topic": "bench", "content": "ping"}}) + b"\n"
    to_subscriber, to_reply = [], []
    for _ in range(pings):
        arrived, replied = sub.expect(1), publisher.expect(1)
        started = time.perf_counter()
        publisher.transport.write(line)
        await asyncio.wait_for(replied, ROUND_TIMEOUT_S)
        to_reply.append(time.perf_counter() - started)
        await asyncio.wait_for(arrived, ROUND_TIMEOUT_S)
        to_subscriber.append(time.perf_counter() - started)
    for protocol in (sub, publisher):
        protocol.transport.close()
    await asyncio.sleep(0.05)
    return {"delivery_ms": percentiles(to_subscriber), "reply_ms": percentiles(to_reply)}


def percentiles(seconds: list[float]) -> tuple[float, float]:
    ordered = sorted(seconds)
    return (statistics.median(ordered) * 1000, ordered[int(len(ordered) * 0.99) - 1] * 1000)


async def measure(args, setups: dict[str, tuple[str, str]]) -> dict:
    results = {name: {"fan_out": [], "latency": []} for name in setups}
    for round_index in range(args.rounds + 1):  # round 0 warms every set-up and is not counted
        for name, (publish_path, subscribe_path) in setups.items():
            rate = await fan_out(publish_path, subscribe_path, args.subscribers, args.messages)
            lat = await latency(publish_path, subscribe_path, args.pings)
            if round_index:
                results[name]["fan_out"].append(rate)
                results[name]["latency"].append(lat)
                print(f"  round {round_index} {name:6}: {rate['deliveries_per_s']:>10,.0f} "
                      f"deliveries/s   delivery p50 {lat['delivery_ms'][0]:.2f} ms   "
                      f"reply p50 {lat['reply_ms'][0]:.2f} ms", flush=True)
    return results


def report(results: dict) -> None:
    base = None
    print(f"{'set-up':8} {'deliveries/s':>14} {'ratio':>6} {'delivery p50':>13} "
          f"{'p99':>8} {'reply p50':>10} {'p99':>8}   (medians over rounds, ms)")
    for name, figures in results.items():
        rate = statistics.median(r["deliveries_per_s"] for r in figures["fan_out"])
        delivery = [statistics.median(r["delivery_ms"][i] for r in figures["latency"])
                    for i in (0, 1)]
        reply = [statistics.median(r["reply_ms"][i] for r in figures["latency"]) for i in (0, 1)]
        base = base or (rate, delivery[0])
        print(f"{name:8} {rate:>14,.0f} {rate / base[0]:>6.2f} {delivery[0]:>13.2f} "
              f"{delivery[1]:>8.2f} {reply[0]:>10.2f} {reply[1]:>8.2f}"
              f"   latency x{delivery[0] / base[1]:.1f}")
    complete = all(r["complete"] for f in results.values() for r in f["fan_out"])
    print(f"every delivery arrived: {complete}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subscribers", type=int, default=50)
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--pings", type=int, default=300)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="ksi-clusterbench-", dir="/tmp"))
    processes = []
    try:
        nats, url = start_nats_server(workdir / "nats")
        processes.append(nats)
        paths = {}
        for name, cluster in (("single", None), ("node-a", "node-a"), ("node-b", "node-b")):
            (workdir / name).mkdir()
            settings = {} if cluster is None else {"cluster": {"nats_url": url,
                                                               "node_id": cluster}}
            proc, paths[name] = start_daemon(workdir / name, settings)
            processes.append(proc)
        time.sleep(1.0)  # the nodes reach NATS and set up their streams
        setups = {"single": (paths["single"], paths["single"]),
                  "local": (paths["node-a"], paths["node-a"]),
                  "cross": (paths["node-a"], paths["node-b"])}
        print(f"fan-out: 1 publisher -> {args.subscribers} subscribers, {args.messages} "
              f"messages; latency: {args.pings} messages one at a time; {args.rounds} rounds "
              f"(+1 warm-up)")
        results = uvloop.run(measure(args, setups))
    finally:
        for proc in reversed(processes):
            stop(proc)
        shutil.rmtree(workdir, ignore_errors=True)
    report(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
