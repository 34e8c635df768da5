"""Completion benchmark: what the daemon adds to a model call, against litellm called directly.

    .venv/bin/python bench/completion_bench.py [--calls 300 --warmup 30 --sessions 100 --turns 2
                                                --journals NORMAL,FULL --journal-requests 500]
    .venv/bin/python bench/completion_bench.py --segments 100

Both paths call the same local OpenAI-compatible server (tests/fake_openai_server.py, its own
process) in the same run:

1. Added latency: `--calls` sequential plain calls each way, rotating direct and one daemon per
   journal `synchronous` level in `--journals` (and who goes first). Direct =
   `litellm.acompletion(...)` in this process; daemon = `completion:request` over the Unix
   socket (each call a new session, so the turn is stored in the conversation store as well).
   Prints medians and the difference to direct for each daemon (target < 1 ms).
2. The journal alone, per level: `--journal-requests` requests written in this process through
   the plugin's Journal, one after another: accept, then outcome (the two commits a completion
   waits for), then the turns-stored mark. Prints the median of accept + outcome per request.
3. Concurrency: `--sessions` sessions at once, `--turns` turns each, through
   `completion:async` on one connection, for each daemon; every request must end with
   `completion:result` and every turn must see the session's earlier turns. Baseline: the same
   number of direct litellm calls per round, `asyncio.gather`ed. Prints wall time for both and
   the ratio.

Each daemon runs with `max_concurrent` = `--sessions` so both sides may run every call at once.
Every process started here is stopped before the script exits.

`--segments N` instead: where one call's time goes. The daemon's plugins are started in this
process, on uvloop as in the daemon, and `N` `completion:request`s are fed to the router one
at a time; each is cut into segments (accepted, journaled, model called, answered, outcome
committed, replied) and each segment's wall time and event-loop CPU (`time.thread_time`) is
printed as a median. CPU figures hold on a loaded machine where wall-clock ones do not.
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

from bench_daemon import start_fake_server, stop_fake_server

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
ENVIRONMENT = {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_MODE": "PRODUCTION",
               "HF_HUB_OFFLINE": "1", "NO_COLOR": "1"}
os.environ.update(ENVIRONMENT)
TARGET_ADDED_MS = 1.0
SETTLE_S = 0.005


def start_daemon(workdir: Path, api_base: str, sessions: int, journal: str) -> subprocess.Popen:
    from ksi_daemon.launcher import wait_until_healthy
    config = {"plugins": {"completion": {
        "max_concurrent": sessions, "journal": {"synchronous": journal},
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


async def measure_added_latency(conns: dict[str, Connection], litellm, api_base: str,
                                calls: int, warmup: int) -> dict:
    """Median ms per call: "direct", and one entry per daemon (keyed like `conns`)."""
    messages = [{"role": "user", "content": "how long does this take?"}]

    async def direct() -> float:
        started = time.perf_counter()
        await litellm.acompletion(model="openai/echo", messages=messages, api_base=api_base,
                                  api_key="sk-bench", num_retries=0, max_retries=0, timeout=30)
        return time.perf_counter() - started

    def through(conn: Connection):
        async def daemon() -> float:
            started = time.perf_counter()
            reply = await conn.request("completion:request",
                                       {"prompt": messages[0]["content"], "model": "echo"})
            elapsed = time.perf_counter() - started
            assert "data" in reply, reply
            return elapsed
        return daemon

    paths = {"direct": direct, **{name: through(conn) for name, conn in conns.items()}}
    for _ in range(warmup):
        for run in paths.values():
            await run()
    seconds: dict[str, list[float]] = {name: [] for name in paths}
    names = list(paths)
    for i in range(calls):
        for name in names[i % len(names):] + names[:i % len(names)]:  # who goes first rotates
            # Each call starts from an idle process: litellm's success logging of a direct call
            # runs in this process after the call returns, and would otherwise delay reading the
            # reply of the daemon call that follows it.
            await asyncio.sleep(SETTLE_S)
            seconds[name].append(await paths[name]())
    return {name: statistics.median(values) * 1000 for name, values in seconds.items()}


async def measure_journal(level: str, requests: int) -> float:
    """Median µs of accept + outcome, the two journal commits a completion waits for."""
    import logging

    import structlog

    from ksi_daemon.plugins.completion.journal import Entry, Journal
    # The writer's "stopped" line is for the daemon's log, not this report.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    directory = Path(tempfile.mkdtemp(prefix="ksi-cj-", dir="/tmp"))
    journal = Journal(directory / "journal.db", level, deadline_s=30)
    outcome = {"text": "turn 1: you said 'how long does this take?'", "usage": {},
               "status": "completed"}
    times = []
    try:
        for n in range(requests):
            entry = Entry(request_id=f"r{n}", session_id=f"s{n}", new_session=True,
                          model="echo", agent_id=None, correlation_id=f"c{n}",
                          request={"prompt": "how long does this take?", "model": "echo"},
                          accepted_at=time.time())
            started = time.perf_counter()
            await journal.accept(entry)
            await journal.finish(entry.request_id, "completed", outcome)
            times.append(time.perf_counter() - started)
            journal.turns_stored(entry.request_id)  # (marked in groups, every 0.5 s)
    finally:
        await journal.close()
        shutil.rmtree(directory, ignore_errors=True)
    return statistics.median(times) * 1e6


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
    levels = [level.strip().upper() for level in args.journals.split(",") if level.strip()]
    server, api_base = start_fake_server()
    workdir = Path(tempfile.mkdtemp(prefix="ksi-cb-", dir="/tmp"))
    daemons: list[subprocess.Popen] = []
    conns: dict[str, Connection] = {}
    try:
        for level in levels:
            (workdir / level).mkdir()
            daemons.append(start_daemon(workdir / level, api_base, args.sessions, level))
            conns[level] = await Connection.open(str(workdir / level / "var" / "run" /
                                                     "daemon.sock"))
        import litellm  # the baseline's own copy, loaded like the daemon loads it
        litellm.suppress_debug_info = True
        import logging
        logging.getLogger("LiteLLM").setLevel(logging.WARNING)
        latency = await measure_added_latency(conns, litellm, api_base, args.calls, args.warmup)
        print(f"added latency, {args.calls} sequential plain calls each way (median):")
        print(f"  litellm direct                  {latency['direct']:8.3f} ms")
        for level in levels:
            added = latency[level] - latency["direct"]
            verdict = "PASS" if added < TARGET_ADDED_MS else "FAIL"
            print(f"  through daemon, journal {level:<7} {latency[level]:8.3f} ms  added "
                  f"{added:.3f} ms (ratio {latency[level] / latency['direct']:.3f}; "
                  f"target < {TARGET_ADDED_MS:g} ms: {verdict})")
        for level in levels:
            journal_us = await measure_journal(level, args.journal_requests)
            print(f"journal alone, {level:<6}: accept + outcome, median of "
                  f"{args.journal_requests} requests: {journal_us:8.1f} µs")
        for level in levels:
            for round_no in range(args.rounds):
                figures = await measure_concurrent_sessions(
                    conns[level], litellm, api_base, args.sessions, args.turns,
                    f"r{round_no}")
                print(f"concurrent sessions, journal {level}, round {round_no + 1}: "
                      f"{args.sessions} sessions x {args.turns} turns = "
                      f"{figures['requests']} requests: {figures['completed']} completed, "
                      f"{figures['errors']} errors, every turn saw its history: "
                      f"{figures['turns_saw_history']}; daemon {figures['daemon_s']:.3f} s, "
                      f"direct gather {figures['direct_s']:.3f} s, ratio {figures['ratio']:.2f}")
    finally:
        for conn in conns.values():
            conn.close()
        for daemon in daemons:
            daemon.terminate()
            daemon.wait(20)
        stop_fake_server(server)
        shutil.rmtree(workdir, ignore_errors=True)


class SegmentClock:
    """Marks (name, wall, loop-thread CPU) at the points one request passes."""

    def __init__(self):
        self.marks: list[tuple[str, float, float]] = []

    def mark(self, name: str) -> None:
        self.marks.append((name, time.perf_counter(), time.thread_time()))

    def segments(self) -> list[tuple[str, float, float]]:
        names = [name for name, _, _ in self.marks]
        end = names.index("replied") + 1 if "replied" in names else len(names)
        return [(f"{a} -> {b}", (tb - ta) * 1000, (cb - ca) * 1000)
                for (a, ta, ca), (b, tb, cb) in zip(self.marks[:end - 1], self.marks[1:end])]


def clocked_connection(clock: SegmentClock):
    """An in-memory connection for the router whose reply resolves the future waiting for it
    (built on state_inprocess.QuietConnection, imported with the in-process daemon)."""
    from state_inprocess import QuietConnection

    class ClockedConnection(QuietConnection):
        def __init__(self):
            super().__init__("bench:segments")
            self.waiting: dict[str, asyncio.Future] = {}

        def send(self, line: bytes) -> None:
            clock.mark("replied")
            message = orjson.loads(line)
            waiter = self.waiting.pop(message["correlation_id"], None)
            if waiter is not None:
                waiter.set_result(message)
    return ClockedConnection()


def clock_the_plugin(plugin, clock: SegmentClock) -> None:
    """Wrap the journal's writes and the model call of the running plugin with marks."""
    from ksi_daemon.plugins.completion import plugin as plugin_module
    for name in ("accept", "finish"):
        write = getattr(plugin.journal, name)

        def clocked(*args, _write=write, _name=name, on_commit=None, **kwargs):
            clock.mark(f"{_name} submitted")

            def committed(result, error, _then=on_commit):
                clock.mark(f"{_name} committed")
                if _then is not None:
                    _then(result, error)
            return _write(*args, on_commit=committed, **kwargs)
        setattr(plugin.journal, name, clocked)
    call_model = plugin_module.call_model

    async def clocked_call(*args, **kwargs):
        clock.mark("model called")
        answer = await call_model(*args, **kwargs)
        clock.mark("model answered")
        return answer
    plugin_module.call_model = clocked_call


async def measure_segments(calls: int) -> None:
    sys.path.insert(0, str(ROOT / "bench"))
    from state_inprocess import start_daemon_in
    server, api_base = start_fake_server()
    var_dir = Path(tempfile.mkdtemp(prefix="ksi-cs-", dir="/tmp"))
    try:
        daemon = await start_daemon_in(var_dir)
        plugin = daemon.plugins.records["completion"].obj
        plugin.aliases["echo"] = {"model": "openai/echo", "api_base": api_base,
                                  "api_key": "sk-bench"}
        await daemon.plugins.ready_all()
        await plugin.loader.ready()
        clock = SegmentClock()
        clock_the_plugin(plugin, clock)
        conn = clocked_connection(clock)
        figures: dict[str, list[tuple[float, float]]] = {}
        for n in range(calls + 10):  # the first 10 warm up
            cid = f"s{n}"
            conn.waiting[cid] = asyncio.get_running_loop().create_future()
            clock.marks.clear()
            clock.mark("request")
            daemon.router.handle_line(orjson.dumps({
                "event": "completion:request", "correlation_id": cid,
                "data": {"prompt": "how long does this take?", "model": "echo"}}), conn)
            assert "data" in await conn.waiting[cid]
            if n >= 10:
                for name, wall, cpu in clock.segments():
                    figures.setdefault(name, []).append((wall, cpu))
            await asyncio.sleep(0.05)  # what follows a reply (turns stored, logging) is done
        print(f"one completion:request through the daemon, {calls} calls, medians:")
        print(f"  {'segment':40s} {'wall ms':>8s} {'loop CPU ms':>12s}")
        for name, values in figures.items():
            print(f"  {name:40s} {statistics.median(w for w, _ in values):8.3f} "
                  f"{statistics.median(c for _, c in values):12.3f}")
        await daemon.plugins.stopping_all()
        await daemon.plugins.shutdown_all()
    finally:
        stop_fake_server(server)
        shutil.rmtree(var_dir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--sessions", type=int, default=100)
    parser.add_argument("--turns", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--journals", default="NORMAL,FULL",
                        help="journal synchronous levels, one daemon each (default NORMAL,FULL)")
    parser.add_argument("--journal-requests", type=int, default=500)
    parser.add_argument("--segments", type=int, default=0, metavar="N",
                        help="instead: where one call's time goes, over N calls in-process")
    args = parser.parse_args()
    if args.segments:  # on uvloop, as the daemon runs
        import uvloop
        uvloop.run(measure_segments(args.segments))
    else:
        asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
