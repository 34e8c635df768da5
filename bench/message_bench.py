"""Pub/sub fan-out: 1 publisher, 100 subscriber connections; the daemon against a raw broker.

    python bench/message_bench.py [--subscribers 100 --messages 5000 --rounds 5 --retention N --no-pin]

Both servers run as subprocesses and are measured in the same run, rounds alternating:

- raw: a minimal uvloop broker (this file with --raw-broker) that writes each line it reads
  from one connection, one write per line, to every other connection: no parsing, no reply,
  no retention, no limits.
- ksi: the daemon; subscribers send `message:subscribe`, the publisher sends `message:publish`
  lines and reads their replies; each message is also retained (committed to messages.db).

The publisher writes its N lines as fast as its socket takes them; each subscriber counts the
lines it receives. Deliveries/s = subscribers × N / (time from the first write until the last
subscriber has all N). The table prints medians over rounds and ksi/raw (target ≥ 0.5).
With 2 or more CPUs the servers are pinned to CPU 0 and this process (the clients) to CPU 1.
Every process started here is stopped before the script exits.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson
import uvloop

from bench_daemon import PYTHON, start_daemon, stop

TARGET_RATIO = 0.5
ROUND_TIMEOUT_S = 20.0


# ---- the raw broker (runs in its own process) --------------------------------------------------

def serve_raw_broker(path: str) -> None:
    peers: set = set()

    class Peer(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport, self.rest = transport, b""
            peers.add(self)

        def data_received(self, data: bytes) -> None:
            data = self.rest + data
            cut = data.rfind(b"\n") + 1
            self.rest = data[cut:]
            others = [peer.transport for peer in peers if peer is not self]
            for line in data[:cut].splitlines(keepends=True):
                for transport in others:
                    transport.write(line)

        def connection_lost(self, exc):
            peers.discard(self)

    async def main():
        server = await asyncio.get_running_loop().create_unix_server(Peer, path)
        async with server:
            await server.serve_forever()

    uvloop.run(main())


# ---- clients ----------------------------------------------------------------------------------

class Subscriber(asyncio.Protocol):
    def __init__(self):
        self.lines, self.target, self.done = 0, None, None

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.lines += data.count(b"\n")
        if self.done is not None and self.lines >= self.target and not self.done.done():
            self.done.set_result(None)

    def expect(self, count: int) -> asyncio.Future:
        self.target, self.done = self.lines + count, asyncio.get_running_loop().create_future()
        if self.lines >= self.target:
            self.done.set_result(None)
        return self.done


class Publisher(Subscriber):
    """Writes lines, pausing while its socket is full; counts what comes back (replies)."""

    def __init__(self):
        super().__init__()
        self.writable = asyncio.Event()
        self.writable.set()

    def pause_writing(self):
        self.writable.clear()

    def resume_writing(self):
        self.writable.set()

    async def write_all(self, lines: list[bytes], chunk: int = 50) -> None:
        for start in range(0, len(lines), chunk):
            await self.writable.wait()
            self.transport.write(b"".join(lines[start:start + chunk]))


async def connect(path: str, factory):
    _transport, protocol = await asyncio.get_running_loop().create_unix_connection(factory, path)
    return protocol


async def open_clients(path: str, subscribers: int, ksi: bool):
    subs = [await connect(path, Subscriber) for _ in range(subscribers)]
    if ksi:
        subscribed = [sub.expect(1) for sub in subs]
        line = orjson.dumps({"event": "message:subscribe", "data": {"topics": ["bench"]}}) + b"\n"
        for sub in subs:
            sub.transport.write(line)
        await asyncio.wait_for(asyncio.gather(*subscribed), 10)
    publisher = await connect(path, Publisher)
    await asyncio.sleep(0.05)  # the raw broker registers peers on accept
    return subs, publisher


def publish_lines(count: int) -> list[bytes]:
    content = {"text": "a message of about one hundred bytes, enough to look like chat text",
               "n": 0}
    lines = []
    for index in range(count):
        content["n"] = index
        lines.append(orjson.dumps({"event": "message:publish",
                                   "data": {"topic": "bench", "content": content}}) + b"\n")
    return lines


async def one_round(path: str, subscribers: int, messages: int, ksi: bool) -> dict:
    subs, publisher = await open_clients(path, subscribers, ksi)
    lines = publish_lines(messages)
    arrived = [sub.expect(messages) for sub in subs]
    replies = publisher.expect(messages) if ksi else None
    started = time.perf_counter()
    await publisher.write_all(lines)
    done, _ = await asyncio.wait(arrived, timeout=ROUND_TIMEOUT_S)
    elapsed = time.perf_counter() - started
    if replies is not None:
        await asyncio.wait_for(replies, ROUND_TIMEOUT_S)
    received = sum(min(sub.lines - (1 if ksi else 0), messages) for sub in subs)
    for protocol in (*subs, publisher):
        protocol.transport.close()
    await asyncio.sleep(0.05)
    return {"deliveries_per_s": received / elapsed, "complete": len(done) == len(subs),
            "received": received, "expected": subscribers * messages, "seconds": elapsed}


# ---- servers ----------------------------------------------------------------------------------

def pinned(cpu: int | None):
    return None if cpu is None else (lambda: os.sched_setaffinity(0, {cpu}))


def start_raw(workdir: Path, cpu) -> tuple[subprocess.Popen, str]:
    path = str(workdir / "raw.sock")
    proc = subprocess.Popen([PYTHON, __file__, "--raw-broker", path], preexec_fn=pinned(cpu))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.socket(socket.AF_UNIX) as probe:
                probe.connect(path)
            return proc, path
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit("the raw broker did not start")


def start_ksi(workdir: Path, cpu, retention: int | None) -> tuple[subprocess.Popen, str]:
    settings = {} if retention is None else \
        {"plugins": {"message": {"retention_per_topic": retention}}}
    return start_daemon(workdir, settings, preexec_fn=pinned(cpu))


# ---- main -------------------------------------------------------------------------------------

async def measure(args, raw_path: str, ksi_path: str) -> dict[str, list[dict]]:
    results = {"raw": [], "ksi": []}
    for round_index in range(args.rounds + 1):  # round 0 warms both up and is not counted
        for name, path in (("raw", raw_path), ("ksi", ksi_path)):
            result = await one_round(path, args.subscribers, args.messages, name == "ksi")
            if round_index:
                results[name].append(result)
                print(f"  round {round_index} {name:3}: {result['deliveries_per_s']:>10,.0f} "
                      f"deliveries/s  ({result['received']}/{result['expected']} in "
                      f"{result['seconds']:.3f} s)", flush=True)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subscribers", type=int, default=100)
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-pin", action="store_true")
    parser.add_argument("--retention", type=int, default=None,
                        help="plugins.message.retention_per_topic (default: the daemon's, 100; "
                             "0 keeps nothing and writes nothing to disk)")
    parser.add_argument("--raw-broker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.raw_broker:
        serve_raw_broker(args.raw_broker)
        return 0
    pin = not args.no_pin and len(os.sched_getaffinity(0)) >= 2
    server_cpu, client_cpu = (0, 1) if pin else (None, None)
    workdir = Path(tempfile.mkdtemp(prefix="ksi-msgbench-", dir="/tmp"))
    processes = []
    try:
        raw, raw_path = start_raw(workdir, server_cpu)
        processes.append(raw)
        daemon, ksi_path = start_ksi(workdir, server_cpu, args.retention)
        processes.append(daemon)
        if client_cpu is not None:
            os.sched_setaffinity(0, {client_cpu})
        print(f"fan-out: 1 publisher -> {args.subscribers} subscribers, {args.messages} "
              f"messages per round, {args.rounds} rounds (+1 warm-up), pinned={pin}")
        results = uvloop.run(measure(args, raw_path, ksi_path))
    finally:
        for proc in processes:
            stop(proc)
        shutil.rmtree(workdir, ignore_errors=True)
    raw_rate = statistics.median(r["deliveries_per_s"] for r in results["raw"])
    ksi_rate = statistics.median(r["deliveries_per_s"] for r in results["ksi"])
    complete = all(r["complete"] for rs in results.values() for r in rs)
    ratio = ksi_rate / raw_rate
    print(f"median deliveries/s: raw {raw_rate:,.0f}   ksi {ksi_rate:,.0f}")
    print(f"ksi/raw {ratio:.2f} (target >= {TARGET_RATIO}: "
          f"{'PASS' if ratio >= TARGET_RATIO else 'FAIL'}); every delivery arrived: {complete}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
