"""Where a pipelined request's CPU goes without the kernel: the daemon's Unix-transport
connection and the raw echo server's, each handed the same 100-line chunk of `system:health`
requests, in this process, on fake transports that drop what is written.

    python bench/pipeline_inprocess.py [--rounds 5 --chunks 300] [--profile]

Prints, per round, the thread CPU time per request of both (the daemon's real router and plugins,
started as bench/state_inprocess.py starts them), alternating, so both sides of a round ran
within a second of each other. With --profile, the daemon's functions by own time (cProfile
inflates small calls: read it for the order, not the figures).
"""
from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import shutil
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--chunks", type=int, default=300, help="100-line chunks per side")
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    os.environ.update({"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_MODE": "PRODUCTION",
                       "HF_HUB_OFFLINE": "1"})
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
