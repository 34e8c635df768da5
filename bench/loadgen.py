"""Closed-loop load generator for a line-JSON server on a Unix socket.

    python bench/loadgen.py --socket PATH --connections 16 --depth 1 [--warmup 1 --duration 5]

Each of `connections` connections keeps `depth` requests in flight: every reply that arrives is
answered by a new request (the new requests of one input chunk go out in one write). Latency is
send-to-reply per request, matched by correlation_id. Only replies that arrive inside the
measuring window (after the warm-up) count. Prints one JSON object on stdout: requests, req/s,
p50/p99/max in microseconds, errors, and the CPU used in the window by this process and (with
--server-pid) by the server: whichever side sits near 100 % of a CPU is the bottleneck.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time

import orjson
import uvloop

_loads = orjson.loads
_clock = time.perf_counter_ns


class Measurement:
    """Shared by all connections: whether we are measuring, and what was seen meanwhile."""

    def __init__(self):
        self.measuring = False
        self.latencies_ns: list[int] = []
        self.errors = 0
        self.unmatched = 0


class LoadConnection(asyncio.Protocol):
    def __init__(self, measurement: Measurement, event: str, depth: int, tag: int):
        self.measurement, self.depth = measurement, depth
        self.tag = f"{tag}-"
        self.prefix = b'{"event":"' + event.encode() + b'","data":{},"correlation_id":"' + \
            self.tag.encode()
        self.next_id = 0
        self.sent_at: dict[str, int] = {}
        self.buffer = b""
        self.transport: asyncio.Transport | None = None
        self.lost = asyncio.get_running_loop().create_future()

    def requests(self, count: int, now: int) -> bytes:
        lines = []
        prefix, sent_at, tag = self.prefix, self.sent_at, self.tag
        for _ in range(count):
            self.next_id += 1
            number = str(self.next_id)
            lines.append(prefix + number.encode() + b'"}\n')
            sent_at[tag + number] = now
        return b"".join(lines)

    def connection_made(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        transport.write(self.requests(self.depth, _clock()))

    def data_received(self, data: bytes) -> None:
        now = _clock()
        if self.buffer:
            data = self.buffer + data
        lines = data.split(b"\n")
        self.buffer = lines.pop()
        measurement, sent_at = self.measurement, self.sent_at
        answered = 0
        for line in lines:
            reply = _loads(line)
            sent = sent_at.pop(reply.get("correlation_id"), None)
            if sent is None:
                measurement.unmatched += 1  # a push, or a reply we did not ask for
                continue
            answered += 1
            if measurement.measuring:
                measurement.latencies_ns.append(now - sent)
                if "error" in reply:
                    measurement.errors += 1
        if answered and not self.transport.is_closing():
            self.transport.write(self.requests(answered, _clock()))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(exc)


_TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def cpu_seconds_of(pid: int) -> float:
    """User + system CPU time of a process so far, from /proc (clock-tick resolution)."""
    with open(f"/proc/{pid}/stat", "rb") as stat:
        fields = stat.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS_PER_S  # utime, stime


def machine_busy_seconds() -> float:
    """CPU time all processes on the machine have used so far (all CPUs, from /proc/stat)."""
    with open("/proc/stat", "rb") as stat:
        ticks = [int(t) for t in stat.readline().split()[1:9]]
    idle = ticks[3] + ticks[4]  # idle, iowait
    return (sum(ticks) - idle) / _TICKS_PER_S


def percentile(ordered: list[int], q: float) -> int:
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


async def run(socket_path: str, event: str, connections: int, depth: int, warmup: float,
              duration: float, server_pid: int | None = None) -> dict:
    loop = asyncio.get_running_loop()
    measurement = Measurement()
    opened = []
    for tag in range(connections):
        _transport, protocol = await loop.create_unix_connection(
            lambda tag=tag: LoadConnection(measurement, event, depth, tag), socket_path)
        opened.append(protocol)
    await asyncio.sleep(warmup)
    server_cpu = cpu_seconds_of(server_pid) if server_pid else None
    client_cpu = time.process_time()
    machine_busy = machine_busy_seconds()
    measurement.measuring = True
    started = _clock()
    await asyncio.sleep(duration)
    measurement.measuring = False
    elapsed_s = (_clock() - started) / 1e9
    client_cpu = time.process_time() - client_cpu
    machine_busy = machine_busy_seconds() - machine_busy
    if server_pid:
        server_cpu = cpu_seconds_of(server_pid) - server_cpu
    # CPU that neither side of the benchmark used: other processes sharing the machine.
    others_cpu = machine_busy - client_cpu - (server_cpu or 0.0)
    for protocol in opened:
        protocol.transport.close()
    await asyncio.wait([p.lost for p in opened], timeout=2)
    ordered = sorted(measurement.latencies_ns)
    if not ordered:
        return {"requests": 0, "rps": 0.0, "errors": measurement.errors,
                "unmatched": measurement.unmatched}
    return {"requests": len(ordered), "seconds": round(elapsed_s, 3),
            "rps": round(len(ordered) / elapsed_s, 1),
            "p50_us": round(percentile(ordered, 50) / 1000, 1),
            "p99_us": round(percentile(ordered, 99) / 1000, 1),
            "max_us": round(ordered[-1] / 1000, 1),
            "errors": measurement.errors, "unmatched": measurement.unmatched,
            "client_cpu_pct": round(100 * client_cpu / elapsed_s, 1),
            "others_cpu_pct": round(max(0.0, 100 * others_cpu / elapsed_s), 1),
            "server_cpu_pct": None if server_cpu is None else
            round(100 * server_cpu / elapsed_s, 1),
            "server_cpu_us_per_request": None if server_cpu is None else
            round(server_cpu * 1e6 / len(ordered), 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--socket", required=True)
    parser.add_argument("--event", default="system:health")
    parser.add_argument("--connections", type=int, default=1)
    parser.add_argument("--depth", type=int, default=1, help="requests in flight per connection")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds before measuring")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds measured")
    parser.add_argument("--cpu", type=int, help="pin this process to one CPU")
    parser.add_argument("--server-pid", type=int, help="report this process's CPU use too")
    args = parser.parse_args()
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    result = uvloop.run(run(args.socket, args.event, args.connections, args.depth, args.warmup,
                            args.duration, args.server_pid))
    sys.stdout.buffer.write(orjson.dumps(result) + b"\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
