"""Completion benchmark: what the daemon adds to a model call, against litellm called directly.

    .venv/bin/python bench/completion_bench.py [--calls 300 --warmup 30 --sessions 100 --turns 2]

Both paths call the same local OpenAI-compatible server (tests/fake_openai_server.py, its own
process) in the same run:

1. Added latency: `--calls` sequential plain calls each way, alternating daemon and direct (and
   who goes first). Direct = `litellm.acompletion(...)` in this process; daemon =
   `completion:request` over the Unix socket (each call a new session, so the turn is stored
   in the conversation store as well). Prints medians and the difference (target < 1 ms).
2. Concurrency: `--sessions` sessions at once, `--turns` turns each, through
   `completion:async` on one connection; every request must end with `completion:result` and
   every turn must see the session's earlier turns. Baseline: the same number of direct
   litellm calls per round, `asyncio.gather`ed. Prints wall time for both and the ratio.

The daemon runs with `max_concurrent` = `--sessions` so both sides may run every call at once.
Every process started here is stopped before the script exits.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
ENVIRONMENT = {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_MODE": "PRODUCTION",
               "HF_HUB_OFFLINE": "1", "NO_COLOR": "1"}
os.environ.update(ENVIRONMENT)
TARGET_ADDED_MS = 1.0


def start_fake_server() -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen([PYTHON, str(ROOT / "tests" / "fake_openai_server.py")],
                               stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
    api_base = process.stdout.readline().decode().strip()
    if not api_base.startswith("http"):
        process.kill()
        raise RuntimeError("the fake OpenAI server did not start")
    return process, api_base


def start_daemon(workdir: Path, api_base: str, sessions: int) -> subprocess.Popen:
    from ksi_daemon.launcher import wait_until_healthy
    config = {"plugins": {"completion": {
        "max_concurrent": sessions,
        "aliases": {"echo": {"model": "openai/echo", "api_base": api_base,
                             "api_key": "sk-bench"}}}}}
    (workdir / "daemon.json").write_bytes(orjson.dumps(config))
    env = {**os.environ, **ENVIRONMENT, "HOME": str(workdir), "KSI_VAR_DIR": str(workdir / "var")}
    env.pop("KSI_SOCKET_PATH", None)
    with open(workdir / "daemon.out", "ab") as out:
        process = subprocess.Popen(
            [PYTHON, "-m", "ksi_daemon", "--foreground", "--config", str(workdir / "daemon.json")],
            cwd=workdir, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
    if wait_until_healthy(str(workdir / "var" / "run" / "daemon.sock"), process,
                          timeout=30) is None:
        raise RuntimeError((workdir / "daemon.out").read_text()[-2000:])
    return process


class Connection:
    """One Unix-socket connection: requests in, replies and pushes out, matched by id."""

    def __init__(self, reader, writer):
        self.reader, self.writer = reader, writer
        self.counter = 0

    @classmethod
    async def open(cls, path: str) -> "Connection":
        reader, writer = await asyncio.open_unix_connection(path, limit=1 << 24)
        return cls(reader, writer)

    def send(self, event: str, data: dict) -> str:
        self.counter += 1
        cid = f"b{self.counter}"
        self.writer.write(orjson.dumps({"event": event, "data": data, "correlation_id": cid})
                          + b"\n")
        return cid

    async def next(self) -> dict:
        return orjson.loads(await self.reader.readline())

    async def request(self, event: str, data: dict) -> dict:
        cid = self.send(event, data)
        while True:
            message = await self.next()
            if message["type"] == "reply" and message["correlation_id"] == cid:
                return message

    def close(self) -> None:
        self.writer.close()


async def measure_added_latency(conn: Connection, litellm, api_base: str, calls: int,
                                warmup: int) -> dict:
    messages = [{"role": "user", "content": "how long does this take?"}]

    async def direct() -> float:
        started = time.perf_counter()
        await litellm.acompletion(model="openai/echo", messages=messages, api_base=api_base,
                                  api_key="sk-bench", num_retries=0, max_retries=0, timeout=30)
        return time.perf_counter() - started

    async def daemon() -> float:
        started = time.perf_counter()
        reply = await conn.request("completion:request",
                                   {"prompt": messages[0]["content"], "model": "echo"})
        elapsed = time.perf_counter() - started
        assert "data" in reply, reply
        return elapsed

    for _ in range(warmup):
        await direct()
        await daemon()
    direct_s, daemon_s = [], []
    for i in range(calls):
        pair = (direct, daemon) if i % 2 == 0 else (daemon, direct)
        for run in pair:
            (direct_s if run is direct else daemon_s).append(await run())
    direct_ms = statistics.median(direct_s) * 1000
    daemon_ms = statistics.median(daemon_s) * 1000
    return {"direct_ms": direct_ms, "daemon_ms": daemon_ms, "added_ms": daemon_ms - direct_ms,
            "ratio": daemon_ms / direct_ms}


async def measure_concurrent_sessions(conn: Connection, litellm, api_base: str, sessions: int,
                                      turns: int, run_id: str) -> dict:
    started = time.perf_counter()
    await asyncio.gather(*(litellm.acompletion(
        model="openai/echo", messages=[{"role": "user", "content": f"direct {n}"}],
        api_base=api_base, api_key="sk-bench", num_retries=0, max_retries=0, timeout=60)
        for n in range(sessions * turns)))
    direct_s = time.perf_counter() - started

    started = time.perf_counter()
    expected: dict[str, tuple[str, int]] = {}
    for turn in range(turns):
        for n in range(sessions):
            cid = conn.send("completion:async", {"prompt": f"s{n} turn {turn}", "model": "echo",
                                                 "session_id": f"{run_id}-s{n}"})
            expected[cid] = (f"s{n}", turn)
    results, errors = {}, []
    while len(results) + len(errors) < len(expected):
        message = await conn.next()
        if message["event"] == "completion:result":
            results[message["correlation_id"]] = message["data"]
        elif message["event"] in ("completion:error", "completion:cancelled"):
            errors.append(message)
    daemon_s = time.perf_counter() - started
    ordered = all(results[cid]["text"].startswith(f"turn {turn + 1}: you said '{name} turn {turn}'")
                  for cid, (name, turn) in expected.items() if cid in results)
    return {"requests": len(expected), "completed": len(results), "errors": len(errors),
            "turns_saw_history": ordered, "daemon_s": daemon_s, "direct_s": direct_s,
            "ratio": daemon_s / direct_s}


async def main_async(args) -> None:
    server, api_base = start_fake_server()
    workdir = Path(tempfile.mkdtemp(prefix="ksi-cb-", dir="/tmp"))
    daemon = None
    try:
        daemon = start_daemon(workdir, api_base, args.sessions)
        import litellm  # the baseline's own copy, loaded like the daemon loads it
        litellm.suppress_debug_info = True
        import logging
        logging.getLogger("LiteLLM").setLevel(logging.WARNING)
        conn = await Connection.open(str(workdir / "var" / "run" / "daemon.sock"))
        latency = await measure_added_latency(conn, litellm, api_base, args.calls, args.warmup)
        print(f"added latency, {args.calls} sequential plain calls each way (median):")
        print(f"  litellm direct   {latency['direct_ms']:8.3f} ms")
        print(f"  through daemon   {latency['daemon_ms']:8.3f} ms")
        verdict = "PASS" if latency["added_ms"] < TARGET_ADDED_MS else "FAIL"
        print(f"  added            {latency['added_ms']:8.3f} ms  (ratio "
              f"{latency['ratio']:.3f}; target < {TARGET_ADDED_MS:g} ms: {verdict})")
        for round_no in range(args.rounds):
            figures = await measure_concurrent_sessions(conn, litellm, api_base, args.sessions,
                                                        args.turns, f"r{round_no}")
            print(f"concurrent sessions, round {round_no + 1}: {args.sessions} sessions x "
                  f"{args.turns} turns = {figures['requests']} requests: "
                  f"{figures['completed']} completed, {figures['errors']} errors, "
                  f"every turn saw its history: {figures['turns_saw_history']}; "
                  f"daemon {figures['daemon_s']:.3f} s, direct gather {figures['direct_s']:.3f} s, "
                  f"ratio {figures['ratio']:.2f}")
        conn.close()
    finally:
        if daemon is not None:
            daemon.terminate()
            daemon.wait(20)
        server.terminate()
        server.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--sessions", type=int, default=100)
    parser.add_argument("--turns", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
