"""The C load generator (bench/loadgen.c), compiled on first use into bench/.build/.

A Python client tops out near 120k requests/s on this machine, below what both the daemon and the
raw server answer with a pipelined connection, so it hides the gap between them; the C one keeps
its CPU use far below the server's (each run prints both).
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
SOURCE = BENCH_DIR / "loadgen.c"
BINARY = BENCH_DIR / ".build" / "loadgen"


def compiled_loadgen() -> Path:
    """The binary, rebuilt when loadgen.c is newer than it."""
    if BINARY.exists() and BINARY.stat().st_mtime >= SOURCE.stat().st_mtime:
        return BINARY
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise RuntimeError("no C compiler (cc/gcc) to build bench/loadgen.c; "
                           "use --loadgen python, or apt-get install gcc")
    BINARY.parent.mkdir(exist_ok=True)
    subprocess.run([compiler, "-O2", "-o", str(BINARY), str(SOURCE)], check=True)
    return BINARY
