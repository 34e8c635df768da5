"""Profile the daemon under load: where a trivial request's time goes, function by function.

    python bench/profile_daemon.py [--connections 16 --depth 1 --duration 3 --top 25]

Runs `python -m cProfile -m ksi_daemon --foreground` (the daemon itself is unchanged), drives it
with bench/loadgen.py, stops it with SIGTERM and prints the functions with the most own time.
cProfile slows every Python call, so read the shares, not the absolute figures.
"""
from __future__ import annotations

import argparse
import io
import pstats
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

from core_bench import PYTHON, daemon_environment, stop, wait_for_health  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--depth", type=int, default=1)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--sort", default="tottime", help="pstats sort key")
    parser.add_argument("--daemon-config", help="config file for the daemon (default: {})")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="kp-", dir="/tmp"))
    try:
        config = workdir / "daemon.json"
        config.write_bytes(Path(args.daemon_config).read_bytes() if args.daemon_config
                           else b"{}")
        profile = workdir / "daemon.prof"
        with open(workdir / "daemon.out", "ab") as out:
            daemon = subprocess.Popen(
                [PYTHON, "-m", "cProfile", "-o", str(profile), "-m", "ksi_daemon",
                 "--foreground", "--config", str(config)],
                cwd=workdir, env=daemon_environment(workdir), stdin=subprocess.DEVNULL,
                stdout=out, stderr=subprocess.STDOUT)
        try:
            wait_for_health(workdir, daemon, timeout=30)
            load = subprocess.run(
                [PYTHON, str(BENCH_DIR / "loadgen.py"), "--socket",
                 str(workdir / "var" / "run" / "daemon.sock"), "--connections",
                 str(args.connections), "--depth", str(args.depth), "--warmup", "0.5",
                 "--duration", str(args.duration)], capture_output=True, check=True)
            print("load (under cProfile):", load.stdout.decode().strip())
        finally:
            stop(daemon)
        report = io.StringIO()
        stats = pstats.Stats(str(profile), stream=report)
        stats.sort_stats(args.sort).print_stats(args.top)
        print(report.getvalue())
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
