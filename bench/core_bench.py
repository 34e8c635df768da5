"""KSI core benchmark: the daemon against a raw uvloop+orjson server, in one run.

    python bench/core_bench.py [--warmup 1 --duration 3 --rounds 5 --starts 5 --no-pin]

1. Router microbenchmark, in-process: µs per event through Router.handle_line, next to the
   bare orjson loads+dumps baseline (bench/router_micro.py).
2. Start-up: time from spawning `python -m ksi_daemon --foreground` to its first `system:health`
   reply (median of --starts starts).
3. Load: the raw server (bench/echo_server.py) and the daemon, each a subprocess, under the same
   closed-loop load (bench/loadgen.c, compiled on first use, a separate process; --loadgen python
   for bench/loadgen.py, which saturates first): 1 connection × 100 in flight and
   16 connections × 1 in flight, event `system:health`. Rounds alternate raw and daemon; the
   table shows medians over rounds and the daemon/raw ratio.

With 2 or more CPUs the servers are pinned to CPU 0 and the load generator to CPU 1 (--no-pin
lets the scheduler place them). Every process started here is stopped before the script exits.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

import router_micro  # noqa: E402  (sibling scripts, importable once BENCH_DIR is on the path)
from compiled_loadgen import compiled_loadgen  # noqa: E402
from loadgen import cpu_seconds_of  # noqa: E402

PYTHON = sys.executable
DAEMON_ENV = {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_MODE": "PRODUCTION",
              "HF_HUB_OFFLINE": "1", "NO_COLOR": "1"}
# (name, connections, requests in flight, bursts): a burst scenario sends its requests in one
# write and waits for all their replies (C load generator only; see bench/loadgen.c).
SCENARIOS = (("1 × 100", 1, 100, False), ("16 × 1", 16, 1, False),
             ("1 × 100 b", 1, 100, True))
TARGETS = {"1 × 100": {"ratio": 0.65}, "1 × 100 b": {"ratio": 0.65}, "16 × 1": {"ratio": 0.6, "p99_us": 500.0},
           "router_us": 5.0, "startup_s": 0.5}
# A round counts as quiet when processes outside the benchmark used less CPU than this during it.
QUIET_OTHERS_PCT = 10.0


# ---- processes ---------------------------------------------------------------------------------

class Placement:
    """Which CPU the servers and the load generator run on (None: wherever the kernel likes).

    No priority games: with autogroup scheduling (on by default), nice values do not shield a
    process from other sessions' work, so the CPU other processes used is reported instead.
    """

    def __init__(self, server_cpu: int | None, client_cpu: int | None):
        self.server_cpu, self.client_cpu = server_cpu, client_cpu

    def server(self):
        return self._preexec(self.server_cpu)

    def client(self):
        return self._preexec(self.client_cpu)

    @staticmethod
    def _preexec(cpu: int | None):
        """A preexec_fn run in the child: pin it (and every thread it starts) to `cpu`."""
        if cpu is None:
            return None
        return lambda: os.sched_setaffinity(0, {cpu})

    @contextlib.contextmanager
    def applied_here(self):
        """Run the in-process microbenchmark where the servers run, then move back."""
        affinity = os.sched_getaffinity(0)
        if self.server_cpu is not None:
            os.sched_setaffinity(0, {self.server_cpu})
        try:
            yield
        finally:
            os.sched_setaffinity(0, affinity)

    def describe(self) -> str:
        if self.server_cpu is None:
            return "not pinned"
        return f"servers pinned to CPU {self.server_cpu}, load generator to CPU {self.client_cpu}"


def daemon_environment(workdir: Path) -> dict:
    env = {**os.environ, **DAEMON_ENV, "HOME": str(workdir),
           "KSI_VAR_DIR": str(workdir / "var")}
    for name in ("KSI_SOCKET_PATH", "KSI_CONFIG"):
        env.pop(name, None)
    return env


def spawn_daemon(workdir: Path, placement: Placement, config_text: bytes) -> subprocess.Popen:
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "daemon.json"
    config.write_bytes(config_text)
    with open(workdir / "daemon.out", "ab") as out:
        return subprocess.Popen(
            [PYTHON, "-m", "ksi_daemon", "--foreground", "--config", str(config)],
            cwd=workdir, env=daemon_environment(workdir), stdin=subprocess.DEVNULL,
            stdout=out, stderr=subprocess.STDOUT, preexec_fn=placement.server())


def daemon_socket(workdir: Path) -> str:
    return str(workdir / "var" / "run" / "daemon.sock")


def ask_health(socket_path: str) -> dict | None:
    """One system:health request on a fresh connection; None while nobody answers yet."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(2.0)
            sock.connect(socket_path)
            sock.sendall(b'{"event":"system:health","correlation_id":"start"}\n')
            buffer = b""
            while not buffer.endswith(b"\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    return None
                buffer += chunk
        reply = orjson.loads(buffer)
    except (OSError, ValueError):
        return None
    return reply if "data" in reply else None


def wait_for_health(workdir: Path, process: subprocess.Popen, timeout: float = 15.0,
                    poll_s: float = 0.002) -> float:
    """perf_counter time of the first successful health reply; raises if the process dies."""
    socket_path = daemon_socket(workdir)
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        if ask_health(socket_path) is not None:
            return time.perf_counter()
        if process.poll() is not None:
            break
        time.sleep(poll_s)
    stop(process)
    output = (workdir / "daemon.out").read_text(errors="replace")[-3000:]
    raise RuntimeError(f"the daemon gave no system:health reply on {socket_path} within "
                       f"{timeout:g} s (exit code {process.returncode}); its output:\n{output}")


def wait_until_idle(process: subprocess.Popen, started: float, timeout: float = 30.0,
                    sample_s: float = 0.25, idle_share: float = 0.1) -> tuple[float, float]:
    """Wait until the process uses < idle_share of a CPU over a sample; returns (seconds since
    `started`, CPU seconds used so far). Work a plugin does in the background after the socket
    answers (e.g. loading a library) would otherwise be measured as load."""
    deadline = time.perf_counter() + timeout
    used = cpu_seconds_of(process.pid)
    while time.perf_counter() < deadline:
        time.sleep(sample_s)
        now_used = cpu_seconds_of(process.pid)
        if now_used - used < idle_share * sample_s:
            return time.perf_counter() - sample_s - started, now_used
        used = now_used
    raise RuntimeError(f"the daemon was still busy {timeout:g} s after answering system:health")


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def spawn_raw_server(workdir: Path, placement: Placement) -> tuple[subprocess.Popen, str]:
    socket_path = str(workdir / "raw.sock")
    process = subprocess.Popen([PYTHON, str(BENCH_DIR / "echo_server.py"), socket_path],
                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               preexec_fn=placement.server())
    if process.stdout.readline().strip() != b"ready":
        stop(process)
        raise RuntimeError("the raw echo server did not start")
    return process, socket_path


def scenarios(args) -> tuple:
    """The load scenarios this run can drive: bursts need the C load generator."""
    return tuple(s for s in SCENARIOS if args.loadgen == "c" or not s[3])


def run_load(socket_path: str, server_pid: int, connections: int, depth: int, args,
             placement: Placement, bursts: bool = False) -> dict:
    client = [str(compiled_loadgen()), "--burst", "1" if bursts else "0"] \
        if args.loadgen == "c" else [PYTHON, str(BENCH_DIR / "loadgen.py")]
    command = [*client, "--socket", socket_path, "--server-pid", str(server_pid),
               "--connections", str(connections), "--depth", str(depth),
               "--warmup", str(args.warmup), "--duration", str(args.duration)]
    done = subprocess.run(command, capture_output=True, timeout=args.warmup + args.duration + 30,
                          preexec_fn=placement.client())
    if done.returncode != 0:
        raise RuntimeError(f"load generator failed:\n{done.stderr.decode(errors='replace')}")
    result = orjson.loads(done.stdout)
    if result["requests"] == 0 or result["errors"]:
        raise RuntimeError(f"load generator saw no replies or error replies: {result}")
    return result


# ---- the three measurements --------------------------------------------------------------------

def measure_startup(workdir: Path, starts: int, placement: Placement,
                    config_text: bytes) -> list[float]:
    seconds = []
    for attempt in range(starts):
        started = time.perf_counter()
        process = spawn_daemon(workdir, placement, config_text)
        try:
            answered = wait_for_health(workdir, process)
        finally:
            stop(process)
        seconds.append(answered - started)
        print(f"  start {attempt + 1}/{starts}: first system:health reply after "
              f"{seconds[-1]:.3f} s", flush=True)
    return seconds


def measure_load(workdir: Path, args, placement: Placement, config_text: bytes) -> dict:
    """{scenario: {"raw": [round results], "daemon": [round results]}}"""
    spawned = time.perf_counter()
    daemon = spawn_daemon(workdir / "daemon", placement, config_text)
    raw = None
    try:
        answered = wait_for_health(workdir / "daemon", daemon) - spawned
        idle_after, cpu_used = wait_until_idle(daemon, spawned)
        settle = {"health_s": answered, "idle_s": idle_after, "cpu_s": cpu_used}
        print(f"  daemon answered system:health {answered:.3f} s after spawn, was idle "
              f"{idle_after:.2f} s after spawn ({cpu_used:.2f} s CPU); measuring from then",
              flush=True)
        raw, raw_socket = spawn_raw_server(workdir, placement)
        servers = {"raw": (raw_socket, raw.pid),
                   "daemon": (daemon_socket(workdir / "daemon"), daemon.pid)}
        results = {name: {"raw": [], "daemon": []} for name, *_ in scenarios(args)}
        results["settle"] = settle
        for round_number in range(1, args.rounds + 1):
            # Alternate who goes first, so a drift in machine load does not favour one side.
            order = ("raw", "daemon") if round_number % 2 else ("daemon", "raw")
            for name, connections, depth, bursts in scenarios(args):
                for server in order:
                    try:
                        result = run_load(*servers[server], connections, depth, args,
                                          placement, bursts)
                    except RuntimeError as exc:
                        process = daemon if server == "daemon" else raw
                        time.sleep(0.5)
                        if process.poll() is None:
                            raise
                        raise RuntimeError(
                            f"{exc}\nthe {server} server exited with {process.returncode} "
                            f"during the benchmark; {server_output(server, workdir)}") from None
                    results[name][server].append(result)
                    print(f"  round {round_number}/{args.rounds}  {name:8} {server:6} "
                          f"{result['rps']:>10,.0f} req/s  p50 {result['p50_us']:>7.1f} µs  "
                          f"p99 {result['p99_us']:>7.1f} µs  server CPU "
                          f"{result['server_cpu_pct']:>5.1f} %{faults_of(result)}  "
                          f"load generator CPU {result['client_cpu_pct']:>5.1f} %  others "
                          f"{result['others_cpu_pct']:>5.1f} %", flush=True)
        return results
    finally:
        stop(daemon)
        if raw is not None:
            stop(raw)


def faults_of(result: dict) -> str:
    """The server's minor page faults per request (C load generator only): well above zero, its
    allocator hands memory back to the kernel and faults it in again every chunk (README)."""
    faults = result.get("server_faults_per_request")
    return "" if faults is None else f"  faults/req {faults:5.2f}"


def server_output(server: str, workdir: Path) -> str:
    if server != "daemon":
        return "see above for its output"
    output = (workdir / "daemon" / "daemon.out").read_text(errors="replace")[-3000:]
    return f"its output:\n{output}"


# ---- report ------------------------------------------------------------------------------------

def median_of(rounds: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in rounds)


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def report(micro: dict, startup: list[float], load: dict, args, pinning: str) -> None:
    settle = load["settle"]
    print()
    print(f"KSI core benchmark — {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} "
          f"UTC, nproc {os.cpu_count()}, Python {platform.python_version()}, {pinning}")
    print(f"load: event system:health, closed loop ('b': in bursts), warm-up {args.warmup:g} s, "
          f"measured {args.duration:g} s, {args.rounds} rounds alternating raw/daemon; "
          "medians of rounds")
    print()
    print(f"{'scenario':10} {'server':8} {'req/s':>10} {'p50 µs':>9} {'p99 µs':>9} "
          f"{'server CPU':>11} {'server CPU/req':>15} {'faults/req':>11} {'loadgen CPU':>12} "
          f"{'others CPU':>11}")
    for name, *_ in scenarios(args):
        for server in ("raw", "daemon"):
            rounds = load[name][server]
            faults = f"{median_of(rounds, 'server_faults_per_request'):>11.2f}" \
                if args.loadgen == "c" else f"{'n/a':>11}"
            print(f"{name:10} {server:8} {median_of(rounds, 'rps'):>10,.0f} "
                  f"{median_of(rounds, 'p50_us'):>9.1f} {median_of(rounds, 'p99_us'):>9.1f} "
                  f"{median_of(rounds, 'server_cpu_pct'):>9.1f} % "
                  f"{median_of(rounds, 'server_cpu_us_per_request'):>12.2f} µs {faults} "
                  f"{median_of(rounds, 'client_cpu_pct'):>10.1f} % "
                  f"{median_of(rounds, 'others_cpu_pct'):>9.1f} %")
        # The verdict uses the ratio within each round (raw and daemon measured back to back, so
        # under the same outside load), not the ratio of medians taken from different rounds.
        paired = statistics.median(d["rps"] / r["rps"] for d, r in
                                   zip(load[name]["daemon"], load[name]["raw"]))
        target = TARGETS[name]
        print(f"{'':10} {'ratio':8} {paired:>9.2f}×  daemon/raw req/s, median of per-round "
              f"ratios (target ≥ {target['ratio']}×: {verdict(paired >= target['ratio'])})")
        ratio = median_of(load[name]["daemon"], "rps") / median_of(load[name]["raw"], "rps")
        print(f"{'':10} {'':8} ratio of the medians above {ratio:.2f}×")
        cost = median_of(load[name]["daemon"], "server_cpu_us_per_request") / \
            median_of(load[name]["raw"], "server_cpu_us_per_request")
        print(f"{'':10} {'':8} server CPU per request daemon/raw {cost:.2f}×")
        if "p99_us" in target:
            p99 = median_of(load[name]["daemon"], "p99_us")
            print(f"{'':10} {'':8} daemon p99 {p99:.1f} µs "
                  f"(target < {target['p99_us']:g} µs: {verdict(p99 < target['p99_us'])})")
            quiet = [r for r in load[name]["daemon"] if r["others_cpu_pct"] < QUIET_OTHERS_PCT]
            print(f"{'':10} {'':8} diagnostic: daemon p99 in the {len(quiet)} of "
                  f"{len(load[name]['daemon'])} rounds where other processes used "
                  f"< {QUIET_OTHERS_PCT:g} % CPU: " +
                  (f"median {median_of(quiet, 'p99_us'):.1f} µs" if quiet else "no such round"))
    print()
    print(f"router, in-process: {micro['router_us']:.2f} µs/event through handle_line "
          f"(target ≤ {TARGETS['router_us']:g} µs: "
          f"{verdict(micro['router_us'] <= TARGETS['router_us'])})")
    print(f"  baseline orjson loads+dumps: {micro['baseline_us']:.2f} µs/event; "
          f"ratio router/baseline {micro['ratio']:.2f}×")
    print(f"  request without correlation_id (the daemon generates one): "
          f"{micro['router_without_correlation_id_us']:.2f} µs/event")
    print("  system:health through the real plugin manager's router: " + (
        f"{micro['health_us']:.2f} µs/event" if micro["health_us"] is not None
        else f"n/a ({micro['health_problem']})"))
    print(f"  the same reply shape with pid and plugin counts worked out beforehand: "
          f"{micro['health_cached_us']:.2f} µs/event")
    print(f"  median of {micro['rounds']} rounds × {micro['events_per_round']:,} events")
    startup_median = statistics.median(startup)
    startup_ok = startup_median < TARGETS["startup_s"]
    print(f"start-up: spawn to first system:health reply, median {startup_median:.3f} s of "
          f"{len(startup)} (min {min(startup):.3f}, max {max(startup):.3f}) "
          f"(target < {TARGETS['startup_s']:g} s: {verdict(startup_ok)})")
    print(f"  after answering, the daemon kept a CPU busy until {settle['idle_s']:.2f} s after "
          f"spawn ({settle['cpu_s']:.2f} s CPU in all): background start-up work")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds before measuring")
    parser.add_argument("--duration", type=float, default=3.0, help="seconds measured per run")
    parser.add_argument("--rounds", type=int, default=5, help="load rounds (raw and daemon)")
    parser.add_argument("--starts", type=int, default=5, help="daemon starts timed")
    parser.add_argument("--loadgen", choices=("c", "python"), default="c",
                        help="load generator: bench/loadgen.c (compiled here) or loadgen.py")
    parser.add_argument("--micro-events", type=int, default=100_000)
    parser.add_argument("--micro-rounds", type=int, default=5)
    parser.add_argument("--no-pin", action="store_true",
                        help="do not pin servers to CPU 0 and the load generator to CPU 1")
    parser.add_argument("--daemon-config", help="config file for the daemon (default: {}, "
                        "i.e. every installed plugin with its defaults)")
    parser.add_argument("--json", help="also write every figure measured to this file")
    args = parser.parse_args()
    config_text = Path(args.daemon_config).read_bytes() if args.daemon_config else b"{}"

    cpus = sorted(os.sched_getaffinity(0))
    if args.no_pin or len(cpus) < 2:
        placement = Placement(None, None)
    else:
        placement = Placement(cpus[0], cpus[1])

    workdir = Path(tempfile.mkdtemp(prefix="kb-", dir="/tmp"))  # short: socket paths ≤ 107 B
    try:
        print("router microbenchmark ...", flush=True)
        with placement.applied_here():
            micro = router_micro.run(args.micro_events, args.micro_rounds)
        print(f"  {micro['router_us']:.2f} µs/event, "
              f"baseline {micro['baseline_us']:.2f} µs/event")
        print("start-up ...", flush=True)
        startup = measure_startup(workdir / "startup", args.starts, placement, config_text)
        print("load ...", flush=True)
        load = measure_load(workdir, args, placement, config_text)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    report(micro, startup, load, args, placement.describe())
    if args.json:
        Path(args.json).write_bytes(orjson.dumps(
            {"micro": micro, "startup_s": startup, "load": load,
             "placement": placement.describe(),
             "args": vars(args)}, option=orjson.OPT_INDENT_2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
