"""State benchmark: `state:set` and `state:get` against `system:health`, in the same run.

    python bench/state_bench.py [--rounds 80 --duration 0.1 --synchronous NORMAL|FULL --depth 1
                                 --state-config JSON]
    python bench/state_bench.py --commit-cost    # what one commit of 16 writes costs on this disk

One daemon (a subprocess, in a temporary var dir) is loaded by a separate load-generator process
(this script with --load) with 16 connections × 1 request in flight per event, closed loop: each
reply is answered by the next request on that connection. The three events take turns within
each round, in a rotating order: one event's connections run for a short window while the
others' stay idle, then it drains (no request left in flight) and the next one starts. Each
event's ratio to `system:health` is the median of the per-round ratios, so both sides of a ratio
ran within a second of each other: this shared machine's speed changes by tens of percent from
one second to the next, which made ratios of windows seconds apart scatter by ±0.1.
The machine is shared: every measurement also prints the CPU that other processes used meanwhile
("others", in % of one CPU, from /proc/stat minus this benchmark's processes), so a run can be
judged by the load it ran under. The daemon's CPU per request is split into its event loop (the
main thread) and its other threads (the SQLite writers), and the writes per commit come from the
writer's own count, logged when the daemon stops.
`state:set` writes a different value every time (so every request is a real commit), to 16 keys;
`state:get` reads those keys. With 2 or more CPUs the daemon is pinned to CPU 0 and the load
generator to CPU 1. Every process started here is stopped before the script exits.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson
import resource

PYTHON = sys.executable
EVENTS = ("system:health", "state:set", "state:get")
TARGETS = {"state:set": 0.5, "state:get": 0.8}
DAEMON_ENV = {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_MODE": "PRODUCTION",
              "HF_HUB_OFFLINE": "1", "NO_COLOR": "1"}
SETTLE_S = 0.05  # after an event starts, before its window opens


# ---- the load generator (runs in its own process) ---------------------------------------------

class Load(asyncio.Protocol):
    """One connection of an event's group: sends its next request on each reply while the group
    is running."""

    def __init__(self, group: "Group", index: int):
        self.group, self.index = group, index
        self.n = 0
        self.buffer = b""

    def request(self) -> bytes:
        self.n += 1
        event = self.group.event
        if event == "state:set":
            data = {"key": f"bench-{self.index}", "value": {"n": self.n, "text": "payload"},
                    "namespace": "bench"}
        elif event == "state:get":
            data = {"key": f"bench-{self.index}", "namespace": "bench"}
        else:
            data = {}
        return orjson.dumps({"event": event, "data": data}) + b"\n"

    def connection_made(self, transport) -> None:
        self.transport = transport

    def send(self, requests: int) -> None:
        self.group.in_flight += requests
        self.transport.write(b"".join(self.request() for _ in range(requests)))

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        lines = self.buffer.split(b"\n")
        self.buffer = lines.pop()
        group = self.group
        for line in lines:
            if b'"error"' in line and b'"type":"reply"' in line:
                group.errors += 1
            group.replies += 1
            group.in_flight -= 1
            if group.running:
                self.send(1)
            elif group.in_flight == 0 and not group.drained.done():
                group.drained.set_result(None)


class Group:
    """An event's connections, started and drained as one."""

    def __init__(self, event: str, depth: int):
        self.event, self.depth = event, depth
        self.connections: list[Load] = []
        self.running = False
        self.replies = self.errors = self.in_flight = 0
        self.drained = asyncio.get_running_loop().create_future()

    async def connect(self, socket_path: str, count: int) -> None:
        loop = asyncio.get_running_loop()
        for index in range(count):
            _transport, protocol = await loop.create_unix_connection(
                lambda index=index: Load(self, index), socket_path)
            self.connections.append(protocol)

    def start(self) -> None:
        self.running = True
        self.drained = asyncio.get_running_loop().create_future()
        for connection in self.connections:
            connection.send(self.depth)

    async def stop(self) -> None:
        self.running = False
        if self.in_flight:
            await asyncio.wait_for(self.drained, 30)


class Meters:
    """What a window cost: the daemon's CPU (all threads, and its event loop), this process's,
    the whole machine's (for "others"), and the elapsed time."""

    def __init__(self, daemon_pid: int):
        self.daemon_pid = daemon_pid

    def read(self) -> tuple:
        own = resource.getrusage(resource.RUSAGE_SELF)
        return (time.perf_counter(), cpu_seconds_of(self.daemon_pid),
                cpu_seconds_of(self.daemon_pid, self.daemon_pid),
                own.ru_utime + own.ru_stime, machine_busy_seconds())


async def generate_load(socket_path: str, connections: int, warmup: float, window: float,
                        rounds: int, depth: int, daemon_pid: int) -> dict:
    groups = {event: Group(event, depth) for event in EVENTS}
    for group in groups.values():
        await group.connect(socket_path, connections)
    meters = Meters(daemon_pid)
    for group in groups.values():  # warm every path up once
        group.start()
        await asyncio.sleep(warmup)
        await group.stop()
    windows: dict[str, list] = {event: [] for event in EVENTS}
    for round_number in range(rounds):
        shift = round_number % len(EVENTS)
        for event in EVENTS[shift:] + EVENTS[:shift]:
            group = groups[event]
            group.start()
            await asyncio.sleep(SETTLE_S)
            replies, before = group.replies, meters.read()
            await asyncio.sleep(window)
            replies, after = group.replies - replies, meters.read()
            await group.stop()
            windows[event].append([replies] + [b - a for a, b in zip(before, after)])
    for group in groups.values():
        for connection in group.connections:
            connection.transport.close()
    return {"windows": windows, "errors": {e: g.errors for e, g in groups.items()}}


def run_load_process(args) -> int:
    import uvloop
    result = uvloop.run(generate_load(args.socket, args.connections, args.warmup, args.duration,
                                      args.rounds, args.depth, args.daemon_pid))
    sys.stdout.write(orjson.dumps(result).decode() + "\n")
    return 0


# ---- inline reads against reads in a thread (why state:get runs on the event loop) -----------

def compare_read_placement(keys: int = 100_000, reads: int = 20_000) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from ksi_daemon.storage.sqlite_database import open_reader, open_writer
    from ksi_daemon.plugins.state.store import (KnownVersions, StateReader, create_schema,
                                                encode_value, set_value)
    workdir = Path(tempfile.mkdtemp(prefix="ksi-sr-", dir="/tmp"))
    try:
        path = workdir / "state.db"
        writer = open_writer(path, "NORMAL", create_schema)
        writer.execute("BEGIN")
        known = KnownVersions()
        for n in range(keys):
            set_value(writer, known, "ns", f"key-{n}", encode_value({"n": n, "text": "x" * 50}),
                      None, None, None)
        writer.execute("COMMIT")
        reader = StateReader(open_reader(path))
        names = [f"key-{(n * 7919) % keys}" for n in range(reads)]
        started = time.perf_counter()
        for name in names:
            reader.get("ns", name)
        inline_us = (time.perf_counter() - started) / reads * 1e6

        async def in_thread() -> float:
            started = time.perf_counter()
            for name in names[:reads // 10]:
                await asyncio.to_thread(reader.get, "ns", name)
            return (time.perf_counter() - started) / (reads // 10) * 1e6
        thread_us = asyncio.run(in_thread())
        print(f"point read on {keys} keys: inline {inline_us:.1f} µs, "
              f"via asyncio.to_thread {thread_us:.1f} µs")
        writer.close()
        reader.conn.close()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


# ---- what a commit costs on this disk (why FULL cannot keep up with 16 writers × 1) -------------

def compare_commit_cost(batches: int = 300, writes: int = 16) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from ksi_daemon.storage.sqlite_database import open_writer
    from ksi_daemon.plugins.state.store import (KnownVersions, create_schema, encode_value,
                                                set_plain, set_plain_many)
    # Beside the repository's var/ (the daemon's default place), not /tmp, which may be memory.
    workdir = Path(tempfile.mkdtemp(prefix="ksi-cc-", dir=Path(__file__).resolve().parent))
    try:
        with open(workdir / "probe", "wb") as probe:
            took = []
            for n in range(batches):
                probe.write(b"x" * 4096)
                probe.flush()
                started = time.perf_counter()
                os.fsync(probe.fileno())
                took.append(time.perf_counter() - started)
        print(f"fsync of a 4 KiB append: median {statistics.median(took) * 1e6:.0f} µs")
        # One upsert statement per write (how the writer ran plain sets before it combined
        # them) against one statement for the group (how it runs them now).
        for level, combined in (("FULL", False), ("NORMAL", False), ("NORMAL", True)):
            conn = open_writer(workdir / f"{level}-{combined}.db", level, create_schema)
            known = KnownVersions()
            whole, commit = [], []
            for n in range(batches):
                started = time.perf_counter()
                conn.execute("BEGIN IMMEDIATE")
                group = [(known, "bench", f"bench-{key}", encode_value({"n": n}), None, None)
                         for key in range(writes)]
                if combined:
                    set_plain_many(conn, group)
                else:
                    for write in group:
                        set_plain(conn, *write)
                committing = time.perf_counter()
                conn.execute("COMMIT")
                commit.append(time.perf_counter() - committing)
                whole.append(time.perf_counter() - started)
            conn.close()
            print(f"synchronous={level}: {writes} upserts "
                  f"{'in one statement' if combined else 'one by one'} + COMMIT median "
                  f"{statistics.median(whole) * 1e6:.0f} µs, of which COMMIT "
                  f"{statistics.median(commit) * 1e6:.0f} µs")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def count_checkpoint_stalls(commits: int = 5000, writes: int = 16) -> None:
    """COMMITs of 16 writes with SQLite's automatic checkpoint on (as the writer ran them until
    session 6): the ones that also checkpointed stand out (why the writer now leaves checkpoints
    to ksi_daemon/storage/wal_checkpointer.py)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from ksi_daemon.storage.sqlite_database import open_writer
    from ksi_daemon.plugins.state.store import (KnownVersions, create_schema, encode_value,
                                                set_plain_many)
    workdir = Path(tempfile.mkdtemp(prefix="ksi-cs-", dir=Path(__file__).resolve().parent))
    try:
        conn = open_writer(workdir / "state.db", "NORMAL", create_schema)
        known, took = KnownVersions(), []
        for n in range(commits):
            conn.execute("BEGIN IMMEDIATE")
            set_plain_many(conn, [(known, "bench", f"bench-{key}", encode_value({"n": n}), None, None)
                                  for key in range(writes)])
            started = time.perf_counter()
            conn.execute("COMMIT")
            took.append(time.perf_counter() - started)
        conn.close()
        slow = [t for t in took if t > 0.001]
        print(f"{commits} COMMITs of {writes} writes (synchronous=NORMAL, automatic checkpoint): "
              f"all {sum(took) * 1e3:.0f} ms, median {statistics.median(took) * 1e6:.0f} µs; "
              f"{len(slow)} over 1 ms took {sum(slow) * 1e3:.0f} ms: "
              + ", ".join(f"{t * 1e3:.1f}" for t in slow[:10]) + " ms")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


# ---- the orchestrator ---------------------------------------------------------------------------

def pinned_to(cpu: int | None):
    return None if cpu is None else (lambda: os.sched_setaffinity(0, {cpu}))


def start_daemon(workdir: Path, synchronous: str, cpu: int | None,
                 state_config: dict) -> subprocess.Popen:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from ksi_daemon.launcher import wait_until_healthy
    config = workdir / "daemon.json"
    config.write_bytes(orjson.dumps({"plugins": {"state": {"synchronous": synchronous,
                                                            **state_config}}}))
    env = {**os.environ, **DAEMON_ENV, "HOME": str(workdir), "KSI_VAR_DIR": str(workdir / "var")}
    env.pop("KSI_SOCKET_PATH", None)
    env.pop("KSI_CONFIG", None)
    with open(workdir / "daemon.out", "ab") as out:
        proc = subprocess.Popen([PYTHON, "-m", "ksi_daemon", "--foreground", "--config",
                                 str(config)], cwd=workdir, env=env, stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT, preexec_fn=pinned_to(cpu))
    if wait_until_healthy(str(workdir / "var" / "run" / "daemon.sock"), proc, 30) is None:
        proc.kill()
        raise SystemExit("daemon did not start:\n" + (workdir / "daemon.out").read_text())
    return proc


def cpu_seconds_of(pid: int, task: int | None = None) -> float:
    """User + system CPU time of a process (all its threads), or of one thread, from /proc."""
    stat = Path(f"/proc/{pid}/stat" if task is None else f"/proc/{pid}/task/{task}/stat")
    fields = stat.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> float:
    """CPU time every process on the machine has used since boot (all CPUs), from /proc/stat."""
    fields = [int(f) for f in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def wait_until_idle(pid: int, limit_s: float = 30.0) -> None:
    """Let start-up work finish first (plugins warm libraries in background threads)."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        before = cpu_seconds_of(pid)
        time.sleep(0.5)
        if cpu_seconds_of(pid) - before < 0.025:  # under 5 % of a CPU
            return


def run_load(socket_path: str, args, cpu: int | None, daemon_pid: int) -> dict:
    output = subprocess.run(
        [PYTHON, __file__, "--load", "--socket", socket_path, "--daemon-pid", str(daemon_pid),
         "--connections", str(args.connections), "--depth", str(args.depth),
         "--warmup", str(args.warmup), "--duration", str(args.duration),
         "--rounds", str(args.rounds)],
        capture_output=True, check=True, preexec_fn=pinned_to(cpu), timeout=600).stdout
    return orjson.loads(output)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    # Short windows, many rounds: the machine's speed changes within a quarter second; runs of
    # one daemon scattered about half as much with 0.1 s × 80 as with 0.25 s × 30
    # (bench/RESULTS.md, "State", session 6).
    parser.add_argument("--duration", type=float, default=0.1,
                        help="seconds each event runs per round")
    parser.add_argument("--warmup", type=float, default=0.3)
    parser.add_argument("--rounds", type=int, default=80)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--depth", type=int, default=1, help="requests in flight per connection")
    parser.add_argument("--synchronous", choices=("FULL", "NORMAL"), default="NORMAL",
                        help="the state plugin's setting (default: the daemon's, NORMAL)")
    parser.add_argument("--state-config", type=orjson.loads, default={},
                        help="more of the state plugin's settings, as JSON")
    parser.add_argument("--no-pin", action="store_true")
    parser.add_argument("--read-placement", action="store_true",
                        help="only compare point reads inline and in a thread, then exit")
    parser.add_argument("--commit-cost", action="store_true",
                        help="only time fsync and 16-write commits (FULL, NORMAL), then exit")
    parser.add_argument("--checkpoint-stalls", action="store_true",
                        help="only time 5000 COMMITs with SQLite's automatic checkpoint, then exit")
    parser.add_argument("--load", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--socket", help=argparse.SUPPRESS)
    parser.add_argument("--daemon-pid", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.load:
        return run_load_process(args)
    if args.read_placement:
        compare_read_placement()
        return 0
    if args.commit_cost:
        compare_commit_cost()
        return 0
    if args.checkpoint_stalls:
        count_checkpoint_stalls()
        return 0

    pin = not args.no_pin and (os.cpu_count() or 1) >= 2
    daemon_cpu, load_cpu = (0, 1) if pin else (None, None)
    workdir = Path(tempfile.mkdtemp(prefix="ksi-sb-", dir="/tmp"))
    proc = start_daemon(workdir, args.synchronous, daemon_cpu, args.state_config)
    socket_path = str(workdir / "var" / "run" / "daemon.sock")
    wait_until_idle(proc.pid)
    try:
        load = run_load(socket_path, args, load_cpu, proc.pid)
        db_size = sum(f.stat().st_size for f in (workdir / "var" / "db").glob("state.db*"))
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        per_commit = writes_per_commit(workdir / "daemon.out", "state-writer")
        shutil.rmtree(workdir, ignore_errors=True)

    windows, errors = load["windows"], sum(load["errors"].values())
    # Each window: [replies, seconds, daemon CPU s, its event loop's CPU s, load generator CPU s,
    # whole machine's busy CPU s].
    rps = {event: [w[0] / w[1] for w in windows[event]] for event in EVENTS}
    others = [max(0.0, w[5] - w[2] - w[4]) / w[1] * 100 for event in EVENTS
              for w in windows[event]]
    # Per round: each event's rate, its ratio, and the daemon's CPU per request in that window.
    for number in range(args.rounds):
        health = rps["system:health"][number]
        print(f"round {number + 1:2d} " + "  ".join(
            f"{event} {rps[event][number]:7.0f} req/s"
            + ("" if event == "system:health" else f" ({rps[event][number] / max(health, 1):.2f})")
            + f" {windows[event][number][2] / max(windows[event][number][0], 1) * 1e6:5.1f} µs"
            for event in EVENTS))
    print(f"\nstate benchmark: {args.connections} connections × {args.depth} in flight, "
          f"{args.rounds} rounds × {args.duration} s per event, synchronous={args.synchronous}"
          f"{''.join(f', {k}={v}' for k, v in args.state_config.items())}, "
          f"pinned={'yes' if pin else 'no'}, errors={errors}, state files {db_size} bytes")
    print(f"other processes: median {statistics.median(others):.0f} % of one CPU "
          f"(min {min(others):.0f}, max {max(others):.0f}; the machine has {os.cpu_count()}); "
          f"state writes per commit: {per_commit}")
    print(f"{'event':16s} {'median req/s':>13s} {'ratio':>7s} {'target':>7s}  {'verdict':8s} "
          f"{'daemon CPU µs/request':>22s} {'(event loop)':>12s}")
    for event in EVENTS:
        # (a round whose health window got no reply at all, seen with the machine overloaded,
        # has no ratio)
        ratio = statistics.median(r / h for r, h in zip(rps[event], rps["system:health"]) if h)
        target = TARGETS.get(event)
        verdict = "baseline" if target is None else ("met" if ratio >= target else "MISSED")
        replies = sum(w[0] for w in windows[event])
        cpu_us = sum(w[2] for w in windows[event]) / replies * 1e6
        loop_us = sum(w[3] for w in windows[event]) / replies * 1e6
        print(f"{event:16s} {statistics.median(rps[event]):13.0f} {ratio:7.3f} "
              f"{'' if target is None else f'≥{target}':>7s}  {verdict:8s} "
              f"{cpu_us:22.1f} {loop_us:12.1f}")
    return 0 if errors == 0 else 1


def writes_per_commit(log_path: Path, writer: str) -> str:
    """From the writer's own count, logged at stop ("database_writer_stopped")."""
    for line in log_path.read_text(errors="replace").splitlines():
        if "database_writer_stopped" in line and f"writer={writer}" in line:
            fields = dict(part.split("=", 1) for part in line.split() if "=" in part)
            commits, writes = int(fields["commits"]), int(fields["writes"])
            return f"{writes / max(commits, 1):.1f} ({writes} writes in {commits} commits)"
    return "unknown (the writer's stop line is missing from the daemon log)"


if __name__ == "__main__":
    sys.exit(main())
