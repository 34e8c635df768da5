"""State benchmark: `state:set` and `state:get` against `system:health`, in the same run.

    python bench/state_bench.py [--rounds 7 --duration 1.5 --synchronous NORMAL|FULL --depth 1]
    python bench/state_bench.py --commit-cost    # what one commit of 16 writes costs on this disk

One daemon (a subprocess, in a temporary var dir) is loaded by a separate load-generator process
(this script with --load) with 16 connections × 1 request in flight, closed loop: each reply is
answered by the next request on that connection. Every round measures the three events one after
the other; the table shows medians over rounds, and each event's ratio to `system:health` as the
median of the per-round ratios (each round's events run seconds apart, so a neighbour process
that slows the machine for a while affects both sides of a ratio alike).
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


# ---- the load generator (runs in its own process) ---------------------------------------------

class Load(asyncio.Protocol):
    def __init__(self, event: str, index: int, counts: list, depth: int):
        self.event, self.index, self.counts, self.depth = event, index, counts, depth
        self.n = 0
        self.buffer = b""
        self.measuring = False
        self.lost = asyncio.get_running_loop().create_future()

    def request(self) -> bytes:
        self.n += 1
        if self.event == "state:set":
            data = {"key": f"bench-{self.index}", "value": {"n": self.n, "text": "payload"},
                    "namespace": "bench"}
        elif self.event == "state:get":
            data = {"key": f"bench-{self.index}", "namespace": "bench"}
        else:
            data = {}
        return orjson.dumps({"event": self.event, "data": data}) + b"\n"

    def connection_made(self, transport) -> None:
        self.transport = transport
        transport.write(b"".join(self.request() for _ in range(self.depth)))

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        lines = self.buffer.split(b"\n")
        self.buffer = lines.pop()
        for line in lines:
            if b'"error"' in line and b'"type":"reply"' in line:
                self.counts[1] += 1
            self.counts[2] += 1
            if self.measuring:
                self.counts[0] += 1
            self.transport.write(self.request())

    def connection_lost(self, exc) -> None:
        if not self.lost.done():
            self.lost.set_result(exc)


async def generate_load(socket_path: str, event: str, connections: int, warmup: float,
                        duration: float, depth: int = 1) -> dict:
    loop = asyncio.get_running_loop()
    counts = [0, 0, 0]  # replies inside the window, error replies, all replies
    protocols = []
    for index in range(connections):
        _transport, protocol = await loop.create_unix_connection(
            lambda index=index: Load(event, index, counts, depth), socket_path)
        protocols.append(protocol)
    await asyncio.sleep(warmup)
    for protocol in protocols:
        protocol.measuring = True
    started = time.perf_counter()
    await asyncio.sleep(duration)
    elapsed = time.perf_counter() - started
    for protocol in protocols:
        protocol.measuring = False
        protocol.transport.close()
    return {"event": event, "requests": counts[0], "rps": counts[0] / elapsed,
            "errors": counts[1], "replies": counts[2]}


def run_load_process(args) -> int:
    import uvloop
    result = uvloop.run(generate_load(args.socket, args.event, args.connections, args.warmup,
                                      args.duration, args.depth))
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
                group = [(known, "bench", f"bench-{key}", encode_value({"n": n}), None)
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


# ---- the orchestrator ---------------------------------------------------------------------------

def pinned_to(cpu: int | None):
    return None if cpu is None else (lambda: os.sched_setaffinity(0, {cpu}))


def start_daemon(workdir: Path, synchronous: str, cpu: int | None) -> subprocess.Popen:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from ksi_daemon.launcher import wait_until_healthy
    config = workdir / "daemon.json"
    config.write_bytes(orjson.dumps({"plugins": {"state": {"synchronous": synchronous}}}))
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


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def wait_until_idle(pid: int, limit_s: float = 30.0) -> None:
    """Let start-up work finish first (plugins warm libraries in background threads)."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        before = cpu_seconds_of(pid)
        time.sleep(0.5)
        if cpu_seconds_of(pid) - before < 0.025:  # under 5 % of a CPU
            return


def measure(socket_path: str, event: str, args, cpu: int | None, daemon_pid: int) -> dict:
    cpu_before = cpu_seconds_of(daemon_pid)
    loop_before = cpu_seconds_of(daemon_pid, daemon_pid)  # the main thread runs the event loop
    machine_before, load_before, started = (machine_busy_seconds(), children_cpu_seconds(),
                                            time.monotonic())
    output = subprocess.run(
        [PYTHON, __file__, "--load", "--socket", socket_path, "--event", event,
         "--connections", str(args.connections), "--depth", str(args.depth),
         "--warmup", str(args.warmup),
         "--duration", str(args.duration)],
        capture_output=True, check=True, preexec_fn=pinned_to(cpu), timeout=120).stdout
    result = orjson.loads(output)
    elapsed = time.monotonic() - started
    daemon_s = cpu_seconds_of(daemon_pid) - cpu_before
    loop_s = cpu_seconds_of(daemon_pid, daemon_pid) - loop_before
    ours_s = daemon_s + children_cpu_seconds() - load_before  # the daemon and the load generator
    # Daemon CPU per reply: unlike req/s, this barely moves when neighbours steal the machine,
    # so it shows where the time goes.
    replies = max(result["replies"], 1)
    result["cpu_us"] = daemon_s / replies * 1e6
    result["loop_us"] = loop_s / replies * 1e6
    result["others_pct"] = max(0.0, machine_busy_seconds() - machine_before - ours_s) / elapsed * 100
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=1.5)
    parser.add_argument("--warmup", type=float, default=0.3)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--depth", type=int, default=1, help="requests in flight per connection")
    parser.add_argument("--synchronous", choices=("FULL", "NORMAL"), default="NORMAL",
                        help="the state plugin's setting (default: the daemon's, NORMAL)")
    parser.add_argument("--no-pin", action="store_true")
    parser.add_argument("--read-placement", action="store_true",
                        help="only compare point reads inline and in a thread, then exit")
    parser.add_argument("--commit-cost", action="store_true",
                        help="only time fsync and 16-write commits (FULL, NORMAL), then exit")
    parser.add_argument("--load", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--socket", help=argparse.SUPPRESS)
    parser.add_argument("--event", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.load:
        return run_load_process(args)
    if args.read_placement:
        compare_read_placement()
        return 0
    if args.commit_cost:
        compare_commit_cost()
        return 0

    pin = not args.no_pin and (os.cpu_count() or 1) >= 2
    daemon_cpu, load_cpu = (0, 1) if pin else (None, None)
    workdir = Path(tempfile.mkdtemp(prefix="ksi-sb-", dir="/tmp"))
    proc = start_daemon(workdir, args.synchronous, daemon_cpu)
    socket_path = str(workdir / "var" / "run" / "daemon.sock")
    wait_until_idle(proc.pid)
    results: dict[str, list[float]] = {event: [] for event in EVENTS}
    cpu_us: dict[str, list[float]] = {event: [] for event in EVENTS}
    loop_us: dict[str, list[float]] = {event: [] for event in EVENTS}
    others: list[float] = []
    errors = 0
    try:
        for round_number in range(args.rounds):
            for event in EVENTS:
                result = measure(socket_path, event, args, load_cpu, proc.pid)
                results[event].append(result["rps"])
                cpu_us[event].append(result["cpu_us"])
                loop_us[event].append(result["loop_us"])
                others.append(result["others_pct"])
                errors += result["errors"]
                print(f"round {round_number + 1} {event:14s} {result['rps']:9.0f} req/s "
                      f"({result['requests']} requests, {result['errors']} errors, "
                      f"daemon CPU {result['cpu_us']:.1f} µs/request of which event loop "
                      f"{result['loop_us']:.1f}; others {result['others_pct']:.0f} % CPU)",
                      flush=True)
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

    health = statistics.median(results["system:health"])
    print(f"\nstate benchmark: {args.connections} connections × {args.depth} in flight, "
          f"{args.rounds} rounds × {args.duration} s, synchronous={args.synchronous}, "
          f"pinned={'yes' if pin else 'no'}, errors={errors}, state files {db_size} bytes")
    print(f"other processes: median {statistics.median(others):.0f} % of one CPU "
          f"(min {min(others):.0f}, max {max(others):.0f}; the machine has {os.cpu_count()}); "
          f"state writes per commit: {per_commit}")
    print(f"{'event':16s} {'median req/s':>13s} {'ratio':>7s} {'target':>7s}  {'verdict':8s} "
          f"{'daemon CPU µs/request':>22s} {'(event loop)':>12s}")
    for event in EVENTS:
        rps = statistics.median(results[event])
        ratio = statistics.median(r / h for r, h in zip(results[event],
                                                          results["system:health"]))
        target = TARGETS.get(event)
        verdict = "baseline" if target is None else ("met" if ratio >= target else "MISSED")
        print(f"{event:16s} {rps:13.0f} {ratio:7.2f} "
              f"{'' if target is None else f'≥{target}':>7s}  {verdict:8s} "
              f"{statistics.median(cpu_us[event]):22.1f} "
              f"{statistics.median(loop_us[event]):12.1f}")
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
