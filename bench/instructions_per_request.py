"""Instructions per request, counted by valgrind: a figure this shared machine cannot move.

    python bench/instructions_per_request.py [--events state:set,system:health --small 200
                                              --large 1200 --warmup 400 --config JSON]

Runs the daemon's router and plugins in-process (as bench/state_inprocess.py does: 16 fake
connections, each sending its next request when its reply comes, the writer thread and SQLite
real) twice per event under `valgrind --tool=cachegrind`, once for `--small` and once for
`--large` requests after the same warm-up, and prints (instructions of the large run − those of
the small one) / (large − small): start-up and shutdown cancel out. Counted: user-space
instructions of every thread (Python, SQLite, orjson, pydantic-core, libc); not counted: the
kernel, cache misses, waiting. Wall-clock speed on this machine moves by tens of percent within
a second; this count moves much less, but not by nothing: for `system:health` about 1–2 %
between runs, for `state:set`, whose writer thread hands off the GIL with the event loop, up to
±10 % with other processes busy (79–98 k in session 8: under valgrind the GIL's 5 ms switch
interval passes after fewer instructions when the machine is loaded, likely the cause). Compare
runs made in the same minute, alternating, and more than one of each. Needs valgrind (apt-get install valgrind); takes about a minute per event.
A valgrind run of this threaded daemon sometimes stalls with every thread waiting (seen in
sessions 5 and 6, also with `--fair-sched=yes`; not under plain Python): each run is stopped
after 10 minutes with an error. Run it again.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR.parent))
sys.path.insert(0, str(BENCH_DIR))


async def run_requests(event: str, count: int, config_json: bytes) -> None:
    """Answer exactly `count` requests of `event` with the in-process daemon, then return."""
    from state_inprocess import LoopedConnection, start_daemon_in

    var_dir = Path(tempfile.mkdtemp(prefix="ksi-ipr-"))
    try:
        daemon = await start_daemon_in(var_dir, config_json)
        finished = asyncio.get_running_loop().create_future()
        replies = [0, True]

        class CountedConnection(LoopedConnection):
            def send(self, line: bytes) -> None:  # sends only as many requests as were asked
                replies[0] += 1
                if replies[0] + 16 <= count:
                    asyncio.get_running_loop().call_soon(self.router.handle_line,
                                                         self.next_line(), self)
                elif replies[0] >= count and not finished.done():
                    finished.set_result(None)

        for number in range(16):
            conn = CountedConnection(daemon.router, number, event, replies)
            daemon.router.handle_line(conn.next_line(), conn)
        await finished
        writer = next(r.obj.writer for r in daemon.plugins.active() if r.name == "state")
        print(f"state writes per commit: {writer.writes / max(writer.commits, 1):.1f}")
        await daemon.plugins.shutdown_all()
    finally:
        shutil.rmtree(var_dir, ignore_errors=True)


def instructions_of(event: str, count: int, config_json: str) -> tuple[int, str]:
    """User-space instructions of a whole run answering `count` requests (valgrind's I refs),
    and the state writer's writes per commit in it."""
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_MODE": "PRODUCTION",
           "HF_HUB_OFFLINE": "1"}
    output = subprocess.run(
        ["valgrind", "--tool=cachegrind", "--cache-sim=no", "--cachegrind-out-file=/dev/null",
         sys.executable, __file__, "--run", event, "--count", str(count), "--config", config_json],
        capture_output=True, text=True, env=env, check=True, timeout=600)
    per_commit = re.search(r"state writes per commit: \S+", output.stdout).group(0)
    return (int(re.search(r"I\s+refs:\s+([\d,]+)", output.stderr).group(1).replace(",", "")),
            per_commit)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", default="state:set,system:health")
    parser.add_argument("--small", type=int, default=200)
    parser.add_argument("--large", type=int, default=1200)
    parser.add_argument("--warmup", type=int, default=400)
    parser.add_argument("--config", default="{}",
                        help='the daemon.json to run with, e.g. \'{"plugins": {"state": '
                             '{"synchronous": "FULL"}}}\'')
    parser.add_argument("--run", help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        import uvloop
        uvloop.run(run_requests(args.run, args.count, args.config.encode()))
        return 0
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is needed: apt-get install valgrind")
    counts = {}
    for event in args.events.split(","):
        small, _ = instructions_of(event, args.warmup + args.small, args.config)
        large, per_commit = instructions_of(event, args.warmup + args.large, args.config)
        counts[event] = (large - small) / (args.large - args.small)
        print(f"{event:16s} {counts[event]:9.0f} instructions per request"
              + (f" ({per_commit}, the larger run)" if event.startswith("state:") else ""))
    if "system:health" in counts:
        for event, count in counts.items():
            if event != "system:health":
                print(f"{event} / system:health: {count / counts['system:health']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
