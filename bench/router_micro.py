"""In-process router microbenchmark: microseconds per event through `Router.handle_line`.

    python bench/router_micro.py [--events 100000 --rounds 5]

A real `ksi_daemon.core.router.Router` with one trivial sync handler and a fake connection, called
inside a running uvloop loop: parse, dispatch, handler, reply encoding, stats, history -- the
daemon's whole per-request work except the socket. The baseline, measured in the same run, is
the least any daemon does per request: `orjson.loads(line)` plus `orjson.dumps(reply)`.

Three more rows, for diagnosis: the same router on a request without correlation_id (the
router then generates one); `system:health` -- the event the load benchmark sends -- through a
router filled by the real plugin manager (every installed plugin loaded and started in a
temporary var dir, no socket opened); and a handler giving a reply of the same shape from
figures worked out beforehand, to show what system:health's own work costs.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import orjson
import uvloop

from ksi_daemon.core.router import Handler, Router

EVENT = "bench:noop"
CACHED_EVENT = "bench:health_cached"
LINE = orjson.dumps({"event": EVENT, "data": {}, "correlation_id": "bench-1"})
LINE_WITHOUT_ID = orjson.dumps({"event": EVENT, "data": {}})
HEALTH_LINE = orjson.dumps({"event": "system:health", "data": {}, "correlation_id": "bench-1"})
CACHED_HEALTH_LINE = orjson.dumps({"event": CACHED_EVENT, "data": {},
                                   "correlation_id": "bench-1"})


class FakeConnection:
    """What the router needs from a connection; counts the bytes it is given."""

    def __init__(self):
        self.id = "bench:1"
        self.closed = False
        self.bytes_out = 0
        self.lines_out = 0
        self.held = {}
        self.grant = None

    def send(self, line: bytes) -> None:
        self.bytes_out += len(line)
        self.lines_out += 1

    def push(self, line: bytes, correlation_id=None) -> None:
        self.send(line)


def answer_ok(data):
    return {"ok": True}


_STARTED_AT = time.time()
_PID = os.getpid()
_PLUGIN_COUNTS = {"active": 5, "failed": 0}


def answer_health_from_cache(data):
    """A system:health-shaped reply whose pid and plugin counts were worked out beforehand:
    what system:health would cost if it did not recount plugins and ask the kernel for its
    pid on every call."""
    return {"status": "healthy", "uptime_s": round(time.time() - _STARTED_AT, 3),
            "version": "0.1.0", "pid": _PID, "plugins": _PLUGIN_COUNTS, "connections": 1}


def build_router() -> Router:
    router = Router()
    router.add_handler(Handler(EVENT, answer_ok, plugin=None))
    router.add_handler(Handler(CACHED_EVENT, answer_health_from_cache, plugin=None))
    router.seal()
    return router


def time_router(router: Router, line: bytes, events: int) -> float:
    """Seconds per event for `events` calls of handle_line."""
    conn = FakeConnection()
    handle_line = router.handle_line
    started = time.perf_counter()
    for _ in range(events):
        handle_line(line, conn)
    elapsed = time.perf_counter() - started
    if conn.lines_out != events:
        raise RuntimeError(f"expected {events} replies, got {conn.lines_out}")
    return elapsed / events


def time_codec_baseline(line: bytes, events: int) -> float:
    """Seconds per event for the bare minimum: decode the request, encode a reply."""
    loads, dumps, now, newline = orjson.loads, orjson.dumps, time.time, \
        orjson.OPT_APPEND_NEWLINE
    started = time.perf_counter()
    for _ in range(events):
        request = loads(line)
        dumps({"type": "reply", "event": request["event"],
               "correlation_id": request["correlation_id"], "data": {"ok": True},
               "timestamp": now()}, option=newline)
    return (time.perf_counter() - started) / events


async def health_router_time(events: int, rounds: int) -> tuple[list[float], str]:
    """µs per system:health through the daemon's own router and plugins; (rounds, problem)."""
    from ksi_daemon.config import load_config
    from ksi_daemon.daemon import Daemon
    from ksi_daemon.logging_setup import configure_logging

    var_dir = Path(tempfile.mkdtemp(prefix="km-", dir="/tmp"))
    daemon = None
    try:
        configure_logging(var_dir / "logs", "WARNING", console=False)
        config_file = var_dir / "daemon.json"
        config_file.write_bytes(b"{}")
        config, _warnings = load_config(str(config_file), {"var_dir": str(var_dir)}, environ={})
        daemon = Daemon(config)
        daemon.plugins.load_all()
        async with asyncio.timeout(20):
            await daemon.plugins.start_all()
        check = FakeConnection()
        captured = []
        check.send = captured.append
        daemon.router.handle_line(HEALTH_LINE, check)
        await asyncio.sleep(0)
        if not captured or "data" not in orjson.loads(captured[0]):
            return [], f"system:health did not answer in-process: {captured[:1]}"
        time_router(daemon.router, HEALTH_LINE, events // 10)
        return [time_router(daemon.router, HEALTH_LINE, events) * 1e6
                for _ in range(rounds)], ""
    except Exception as exc:  # noqa: BLE001 - a diagnostic row must not sink the benchmark
        return [], f"{type(exc).__name__}: {exc}"
    finally:
        if daemon is not None:
            try:
                async with asyncio.timeout(10):
                    await daemon.plugins.shutdown_all()
            except Exception:  # noqa: BLE001
                pass
        shutil.rmtree(var_dir, ignore_errors=True)


async def measure(events: int, rounds: int) -> dict:
    router = build_router()
    check = FakeConnection()
    captured = []
    check.send = captured.append
    router.handle_line(LINE, check)
    reply = orjson.loads(captured[0])
    if reply.get("data") != {"ok": True}:
        raise RuntimeError(f"the router did not answer the benchmark event: {reply}")
    time_router(router, LINE, events // 10)  # warm-up
    router_us, baseline_us, no_id_us, cached_us = [], [], [], []
    for _ in range(rounds):
        baseline_us.append(time_codec_baseline(LINE, events) * 1e6)
        router_us.append(time_router(router, LINE, events) * 1e6)
        no_id_us.append(time_router(router, LINE_WITHOUT_ID, events) * 1e6)
        cached_us.append(time_router(router, CACHED_HEALTH_LINE, events) * 1e6)
    router_median = statistics.median(router_us)
    baseline_median = statistics.median(baseline_us)
    health_us, health_problem = await health_router_time(events, rounds)
    return {"events_per_round": events, "rounds": rounds,
            "health_us": round(statistics.median(health_us), 3) if health_us else None,
            "health_problem": health_problem,
            "health_cached_us": round(statistics.median(cached_us), 3),
            "router_us": round(router_median, 3),
            "router_without_correlation_id_us": round(statistics.median(no_id_us), 3),
            "baseline_us": round(baseline_median, 3),
            "ratio": round(router_median / baseline_median, 2),
            "router_us_all": [round(x, 3) for x in router_us],
            "baseline_us_all": [round(x, 3) for x in baseline_us]}


def run(events: int = 100_000, rounds: int = 5) -> dict:
    return uvloop.run(measure(events, rounds))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=100_000, help="events per round")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    result = run(args.events, args.rounds)
    print(f"router.handle_line: {result['router_us']:.2f} µs/event (median of {args.rounds})")
    print(f"  without correlation_id: {result['router_without_correlation_id_us']:.2f} µs/event")
    print(f"  system:health, all plugins: " + (
        f"{result['health_us']:.2f} µs/event" if result["health_us"] is not None
        else f"n/a ({result['health_problem']})"))
    print(f"  health-shaped reply, pid and plugin counts cached: "
          f"{result['health_cached_us']:.2f} µs/event")
    print(f"baseline loads+dumps:    {result['baseline_us']:.2f} µs/event")
    print(f"ratio router/baseline:   {result['ratio']:.2f}×")


if __name__ == "__main__":
    main()
