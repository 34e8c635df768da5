"""Where a pipelined request's CPU goes without the kernel: the daemon's Unix-transport
connection and the raw echo server's, each handed the same 100-line chunk of `system:health`
requests, in this process, on fake transports that drop what is written.

    python bench/pipeline_inprocess.py [--rounds 5 --chunks 300] [--profile] [--instructions]

Prints, per round, the thread CPU time per request of both (the daemon's real router and plugins,
started as bench/state_inprocess.py starts them), alternating, so both sides of a round ran
within a second of each other. With --profile, the daemon's functions by own time (cProfile
inflates small calls: read it for the order, not the figures). With --instructions, each side's
instructions per request instead, counted by valgrind (cachegrind): each side runs alone twice,
for 50 and for 250 chunks, and the difference is divided by the 20,000 requests between, so
start-up cancels out; the machine's load does not move this figure (about a minute per side),
and with PYTHONHASHSEED fixed neither does the next run's choice of string hashes.
"""
from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import re
import shutil
import subprocess
import statistics
import sys
import tempfile
import time
from pathlib import Path

import uvloop

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))
sys.path.insert(0, str(BENCH_DIR.parent))

import echo_server  # noqa: E402
from state_inprocess import start_daemon_in  # noqa: E402

CHUNK = b"".join(b'{"event":"system:health","data":{},"correlation_id":"0-%d"}\n' % n
                 for n in range(100))


class DroppingTransport:
    """What a connection writes to, minus the kernel: writes are counted and dropped."""

    def __init__(self):
        self.writes = 0

    def write(self, data: bytes) -> None:
        self.writes += 1

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str):
        return None


def cpu_us_per_request(connection, chunks: int) -> float:
    started = time.thread_time()
    for _ in range(chunks):
        connection.data_received(CHUNK)
    return (time.thread_time() - started) / (chunks * 100) * 1e6


async def measure(rounds: int, chunks: int, profile: bool) -> list[tuple[float, float]]:
    from ksi_daemon.plugins.transport_unix.connection import Connection
    var_dir = Path(tempfile.mkdtemp(prefix="ksi-pip-"))
    try:
        daemon = await start_daemon_in(var_dir)
        limits = {"max_line_bytes": 1 << 20, "output_buffer_bytes": 1 << 20,
                  "slow_consumer_grace_s": 5.0}
        ours = Connection(daemon.router, limits, set(), set())
        ours.transport = DroppingTransport()
        daemon.router.connection_opened(ours)
        raw = echo_server.EchoConnection()
        raw.transport = DroppingTransport()
        results = []
        for _ in range(rounds):
            results.append((cpu_us_per_request(ours, chunks), cpu_us_per_request(raw, chunks)))
        if profile:
            profiler = cProfile.Profile()
            profiler.enable()
            cpu_us_per_request(ours, chunks)
            profiler.disable()
            pstats.Stats(profiler).sort_stats("tottime").print_stats(15)
        await daemon.plugins.shutdown_all()
        return results
    finally:
        shutil.rmtree(var_dir, ignore_errors=True)


async def run_side(side: str, chunks: int) -> None:
    """Hand `chunks` chunks to one side only (under valgrind: see instructions_per_request)."""
    from ksi_daemon.plugins.transport_unix.connection import Connection
    var_dir = Path(tempfile.mkdtemp(prefix="ksi-pip-"))
    try:
        daemon = await start_daemon_in(var_dir)
        if side == "daemon":
            connection = Connection(daemon.router, {"max_line_bytes": 1 << 20,
                                                    "output_buffer_bytes": 1 << 20,
                                                    "slow_consumer_grace_s": 5.0}, set(), set())
            daemon.router.connection_opened(connection)
        else:  # the daemon is started for the raw side too, so both start-ups are alike
            connection = echo_server.EchoConnection()
        connection.transport = DroppingTransport()
        for _ in range(chunks):
            connection.data_received(CHUNK)
        await daemon.plugins.shutdown_all()
    finally:
        shutil.rmtree(var_dir, ignore_errors=True)


def instructions_per_request(side: str, small: int = 50, large: int = 250) -> float:
    def count(chunks: int) -> int:
        stderr = subprocess.run(
            ["valgrind", "--tool=cachegrind", "--cache-sim=no", "--cachegrind-out-file=/dev/null",
             sys.executable, __file__, "--side", side, "--chunks", str(chunks)],
            capture_output=True, text=True, check=True, timeout=600,
            env={**os.environ, "PYTHONHASHSEED": "0"}).stderr  # (string hashes move dict probes)
        return int(re.search(r"I\s+refs:\s+([\d,]+)", stderr).group(1).replace(",", ""))
    return (count(large) - count(small)) / ((large - small) * 100)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--chunks", type=int, default=300, help="100-line chunks per side")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--instructions", action="store_true",
                        help="count instructions per request with valgrind instead")
    parser.add_argument("--side", choices=("daemon", "raw"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.update({"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_MODE": "PRODUCTION",
                       "HF_HUB_OFFLINE": "1"})
    if args.side:
        uvloop.run(run_side(args.side, args.chunks))
        return 0
    if args.instructions:
        if shutil.which("valgrind") is None:
            raise SystemExit("valgrind is needed: apt-get install valgrind")
        daemon, raw = instructions_per_request("daemon"), instructions_per_request("raw")
        print(f"instructions per request: daemon {daemon:,.0f}, raw {raw:,.0f}, "
              f"raw/daemon {raw / daemon:.2f}")
        return 0
    if os.cpu_count() > 1:
        os.sched_setaffinity(0, {0})
    results = uvloop.run(measure(args.rounds, args.chunks, args.profile))
    for number, (daemon_us, raw_us) in enumerate(results, 1):
        print(f"round {number}: daemon {daemon_us:5.2f} µs/request, raw {raw_us:5.2f} "
              f"(raw/daemon {raw_us / daemon_us:.2f})")
    print(f"median of {args.rounds} rounds × {args.chunks} chunks of 100 lines: daemon "
          f"{statistics.median(r[0] for r in results):.2f} µs, raw "
          f"{statistics.median(r[1] for r in results):.2f} µs, raw/daemon "
          f"{statistics.median(r[1] / r[0] for r in results):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
