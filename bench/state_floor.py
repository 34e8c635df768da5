"""The floor for the state benchmark: what `state:set` against `system:health` can reach on this
machine when a server does nothing but the least each event needs.

    python bench/state_floor.py [--rounds 5 --duration 1.5]

A bare server (this script with --serve: uvloop, the Unix socket, newline-delimited JSON) answers
`system:health` with a reply of the daemon's shape, and `state:set` by handing the write to a
writer thread that commits each group in one multi-row upsert (WAL, synchronous NORMAL, versions
counted in memory, SCHED_BATCH like the daemon's writers) and replying after the commit. It has
no router, no validation beyond types, no read cache, no `state:changed`, no history, no
timings, no deadlines: each missing piece only makes `state:set` cheaper here than in the daemon.
The load is bench/state_bench.py's own generator (16 connections × 1 in flight), server pinned
to CPU 0 and load to CPU 1, the two events alternating round by round.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import queue
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from pathlib import Path

import orjson

BENCH = Path(__file__).resolve().parent
ROWS = "(?, ?, ?, ?, ?, NULL)"
UPSERT = ("INSERT INTO state VALUES {} ON CONFLICT (namespace, key) DO UPDATE SET "
          "value = excluded.value, version = excluded.version, updated_at = excluded.updated_at")


class GroupCommitter:
    """One writer thread; whatever queued while it committed goes into its next commit."""

    def __init__(self, path: str, loop):
        self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.conn.execute("PRAGMA journal_mode = WAL")
        self.conn.execute("PRAGMA synchronous = NORMAL")
        self.conn.execute("CREATE TABLE state (namespace TEXT, key TEXT, value TEXT, version "
                          "INTEGER, updated_at REAL, expires_at REAL, PRIMARY KEY (namespace, "
                          "key)) WITHOUT ROWID")
        self.loop, self.waiting, self.wake = loop, deque(), queue.SimpleQueue()
        self.versions: dict[tuple, int] = {}
        self.wake_scheduled = False
        threading.Thread(target=self.run, daemon=True).start()

    def submit(self, namespace: str, key: str, value: str, answer) -> None:
        self.waiting.append((namespace, key, value, answer))
        if not self.wake_scheduled:  # one wake-up per pass of the loop
            self.wake_scheduled = True
            self.loop.call_soon(self.wake_writer)

    def wake_writer(self) -> None:
        self.wake_scheduled = False
        self.wake.put(None)

    def run(self) -> None:
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
        while True:
            self.wake.get()
            while self.waiting:
                group = [self.waiting.popleft() for _ in range(min(32, len(self.waiting)))]
                self.commit(group)

    def commit(self, group: list) -> None:
        now, rows, versions = time.time(), {}, []
        for namespace, key, value, _answer in group:
            version = self.versions.get((namespace, key), 0) + 1
            self.versions[namespace, key] = version
            rows[namespace, key] = (namespace, key, value, version, now)
            versions.append(version)
        self.conn.execute("BEGIN IMMEDIATE")
        self.conn.execute(UPSERT.format(", ".join([ROWS] * len(rows))),
                          [field for row in rows.values() for field in row])
        self.conn.execute("COMMIT")
        self.loop.call_soon_threadsafe(self.answer_all, group, versions)

    @staticmethod
    def answer_all(group: list, versions: list) -> None:
        for (namespace, key, _value, answer), version in zip(group, versions):
            answer({"namespace": namespace, "key": key, "version": version})


class BareConnection(asyncio.Protocol):
    started = time.time()

    def __init__(self, committer: GroupCommitter):
        self.committer, self.buffer = committer, b""

    def connection_made(self, transport) -> None:
        self.transport = transport

    def reply(self, event: str, cid: str, data: dict) -> None:
        if not self.transport.is_closing():
            self.transport.write(orjson.dumps(
                {"type": "reply", "event": event, "correlation_id": cid, "data": data,
                 "timestamp": time.time()}, option=orjson.OPT_APPEND_NEWLINE))

    def data_received(self, data: bytes) -> None:
        lines = (self.buffer + data).split(b"\n")
        self.buffer = lines.pop()
        for line in lines:
            request = orjson.loads(line)
            event, data = request["event"], request.get("data") or {}
            cid = request.get("correlation_id") or os.urandom(8).hex()
            if event == "state:set":
                namespace, key = data.get("namespace", "global"), data["key"]
                if not (isinstance(namespace, str) and isinstance(key, str)):
                    raise ValueError("key and namespace must be strings")
                self.committer.submit(namespace, key, orjson.dumps(data["value"]).decode(),
                                      lambda reply, cid=cid: self.reply(event, cid, reply))
            else:
                self.reply(event, cid, {
                    "status": "healthy", "uptime_s": round(time.time() - self.started, 3),
                    "version": "0.1.0", "pid": os.getpid(),
                    "plugins": {"active": 9, "failed": 0}, "connections": 16})


async def serve(socket_path: str) -> None:
    loop = asyncio.get_running_loop()
    committer = GroupCommitter(str(Path(tempfile.mkdtemp(prefix="ksi-floor-")) / "state.db"),
                               loop)
    await loop.create_unix_server(lambda: BareConnection(committer), socket_path)
    print("ready", flush=True)
    await asyncio.Event().wait()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=1.5)
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        import uvloop
        uvloop.run(serve(args.serve))
        return 0
    socket_path = tempfile.mktemp(prefix="ksi-floor-", suffix=".sock")
    server = subprocess.Popen([sys.executable, __file__, "--serve", socket_path],
                              stdout=subprocess.PIPE,
                              preexec_fn=lambda: os.sched_setaffinity(0, {0}))
    results: dict[str, list] = {"system:health": [], "state:set": []}
    try:
        server.stdout.readline()
        for _ in range(args.rounds):
            for event, runs in results.items():
                before = cpu_seconds(server.pid)
                load = subprocess.run(
                    [sys.executable, str(BENCH / "state_bench.py"), "--load", "--socket",
                     socket_path, "--event", event, "--connections", "16", "--depth", "1",
                     "--warmup", "0.3", "--duration", str(args.duration)],
                    capture_output=True, check=True,
                    preexec_fn=lambda: os.sched_setaffinity(0, {1}))
                result = orjson.loads(load.stdout)
                runs.append((result["rps"],
                             (cpu_seconds(server.pid) - before) / result["replies"] * 1e6))
    finally:
        server.kill()
        server.wait()
        os.unlink(socket_path)
    health, sets = results["system:health"], results["state:set"]
    ratios = [s[0] / h[0] for h, s in zip(health, sets)]
    print(f"bare server, {args.rounds} rounds × {args.duration} s, 16 connections × 1 in flight")
    for name, runs in results.items():
        print(f"{name:14s} median {statistics.median(r[0] for r in runs):8.0f} req/s, "
              f"server CPU {statistics.median(r[1] for r in runs):5.1f} µs/request")
    print(f"state:set / system:health: median {statistics.median(ratios):.2f} "
          f"(rounds: {', '.join(f'{r:.2f}' for r in ratios)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
