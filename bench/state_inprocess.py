"""Where a state write's CPU goes without the socket: the daemon's own router and plugins,
driven in-process by 16 fake connections, each sending its next request when its reply comes.

    python bench/state_inprocess.py [--rounds 3 --seconds 1.0 --config JSON]

Everything a request costs between the transport and the writer is here (parse, validate, the
handler, the writer thread and its group commit, the reply's encoding, timings and history);
the socket and the kernel are not. Prints, per event, the process's CPU per request and the
event loop's share (the rest is the writer thread). Pinned to CPU 0, as the daemon is in
bench/state_bench.py, so the writer thread shares the loop's CPU.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import orjson
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
EVENTS = ("system:health", "state:set", "state:get")


class QuietConnection:
    """The least a connection must be for the router (ksi_daemon.core.connection.Connection):
    pushes are dropped on the floor; a subclass says what a reply does."""

    def __init__(self, connection_id: str):
        self.id, self.closed, self.pending = connection_id, False, 0
        self.peer_pid = self.peer_uid = None
        self.pushes_dropped = 0
        self.held = {}
        self.grant = None

    def send(self, line: bytes) -> None:
        raise NotImplementedError

    def push(self, line: bytes, correlation_id=None) -> bool:
        return True

    def reply_owed(self) -> None:
        self.pending += 1

    def reply_done(self, _finished=None) -> None:
        self.pending -= 1

    def buffered_bytes(self) -> int:
        return 0


class LoopedConnection(QuietConnection):
    """Each reply it is given makes it send its next request."""

    def __init__(self, router, number: int, event: str, counts: list):
        super().__init__(f"bench:{number}")
        self.router, self.number, self.event, self.counts = router, number, event, counts
        self.sent = 0

    def next_line(self) -> bytes:
        self.sent += 1
        data = {"key": f"bench-{self.number}", "namespace": "bench"}
        if self.event == "state:set":
            data["value"] = {"n": self.sent, "text": "payload"}
        elif self.event == "system:health":
            data = {}
        return orjson.dumps({"event": self.event, "data": data})

    def send(self, line: bytes) -> None:
        self.counts[0] += 1
        if self.counts[1]:
            asyncio.get_running_loop().call_soon(self.router.handle_line, self.next_line(), self)


async def start_daemon_in(var_dir: Path, config_json: bytes = b"{}"):
    """The daemon's router and plugins, started in this process with `config_json` (the
    daemon.json text; default: the default config)."""
    from ksi_daemon.config import load_config
    from ksi_daemon.daemon import Daemon
    from ksi_daemon.logging_setup import configure_logging
    configure_logging(var_dir / "logs", "WARNING", console=False)
    (var_dir / "daemon.json").write_bytes(config_json)
    config, _warnings = load_config(str(var_dir / "daemon.json"), {"var_dir": str(var_dir)},
                                    environ={})
    daemon = Daemon(config)
    daemon.plugins.load_all()
    await daemon.plugins.start_all()
    return daemon


async def measure(rounds: int, seconds: float, config_json: bytes = b"{}") -> dict:
    var_dir = Path(tempfile.mkdtemp(prefix="ksi-sip-"))
    try:
        daemon = await start_daemon_in(var_dir, config_json)
        results: dict[str, list] = {event: [] for event in EVENTS}
        try:
            for _ in range(rounds):
                for event in EVENTS:
                    counts = [0, True]  # replies, still sending
                    for number in range(16):
                        conn = LoopedConnection(daemon.router, number, event, counts)
                        daemon.router.handle_line(conn.next_line(), conn)
                    await asyncio.sleep(0.2)  # warm up
                    replies, loop_cpu, cpu = counts[0], time.thread_time(), time.process_time()
                    await asyncio.sleep(seconds)
                    replies = counts[0] - replies
                    results[event].append(((time.process_time() - cpu) / replies * 1e6,
                                           (time.thread_time() - loop_cpu) / replies * 1e6))
                    counts[1] = False
                    await asyncio.sleep(0.1)  # let the last replies land
        finally:
            await daemon.plugins.shutdown_all()
        return results
    finally:
        shutil.rmtree(var_dir, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--config", default="{}",
                        help='the daemon.json text, e.g. \'{"plugins": {"state": {"audit": false}}}\'')
    args = parser.parse_args()
    os.environ.update({"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_MODE": "PRODUCTION",
                       "HF_HUB_OFFLINE": "1"})
    if hasattr(os, "sched_setaffinity") and os.cpu_count() > 1:
        os.sched_setaffinity(0, {0})
    results = uvloop.run(measure(args.rounds, args.seconds, args.config.encode()))
    print(f"in-process, 16 fake connections × 1 in flight, {args.rounds} rounds × "
          f"{args.seconds} s (medians), config {args.config}")
    for event, runs in results.items():
        print(f"{event:14s} CPU {statistics.median(r[0] for r in runs):5.1f} µs/request, "
              f"event loop {statistics.median(r[1] for r in runs):5.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
