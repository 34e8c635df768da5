"""What binding None costs a group of state writes: with KSI's None adapter, and without it.

    python bench/sqlite_bind_micro.py [--rounds 10 --groups 500]

Python 3.11's sqlite3 binds int, float, str and bytearray directly and sends anything else,
None included, through its adaptation protocol; KSI registers an adapter for None
(ksi_daemon/storage/sqlite_database.py). Each group here is what the state writer runs for 16
plain sets without expiry: BEGIN IMMEDIATE, `set_plain_many` (one 16-row upsert, 16 None
`expires_at`), COMMIT, on a real database file. The two variants alternate in rounds on one
connection, the adapter removed and put back between them, and the thread's CPU time is
measured, pinned to CPU 0.
"""
from __future__ import annotations

import argparse
import itertools
import os
import shutil
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

import orjson

from ksi_daemon.plugins.state.store import KnownVersions, create_schema, set_plain_many
from ksi_daemon.storage.sqlite_database import open_writer

NONE_ADAPTER = (type(None), sqlite3.PrepareProtocol)
WRITES_PER_GROUP = 16


def cpu_us_per_group(conn, known: KnownVersions, groups: int, values) -> float:
    spent = 0.0
    for n in itertools.islice(values, groups):  # a new value each group: every upsert writes
        writes = [(known, "bench", f"bench-{key}", orjson.dumps({"n": n}).decode(), None)
                  for key in range(WRITES_PER_GROUP)]
        started = time.thread_time()
        conn.execute("BEGIN IMMEDIATE")
        set_plain_many(conn, writes)
        conn.execute("COMMIT")
        spent += time.thread_time() - started
    return spent / groups * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--groups", type=int, default=500)
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {0})
    adapter = sqlite3.adapters[NONE_ADAPTER]
    workdir = Path(tempfile.mkdtemp(prefix="ksi-bind-", dir=Path(__file__).resolve().parent))
    try:
        conn = open_writer(workdir / "state.db", "NORMAL", create_schema)
        known = KnownVersions()
        results: dict[str, list[float]] = {"without the adapter": [], "with the adapter": []}
        values = itertools.count()
        for _round in range(args.rounds):
            for variant, spent in results.items():
                if variant == "with the adapter":
                    sqlite3.adapters[NONE_ADAPTER] = adapter
                else:
                    del sqlite3.adapters[NONE_ADAPTER]
                spent.append(cpu_us_per_group(conn, known, args.groups, values))
        sqlite3.adapters[NONE_ADAPTER] = adapter
        conn.close()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"{WRITES_PER_GROUP} plain sets + COMMIT, CPU per group, {args.rounds} alternating "
          f"rounds × {args.groups} groups")
    for variant, spent in results.items():
        print(f"{variant:20s} median {statistics.median(spent):6.1f} µs  "
              f"(rounds: {', '.join(f'{x:.0f}' for x in spent)})")
    pairs = [a - b for a, b in zip(*results.values())]
    print(f"saved per group: median {statistics.median(pairs):.1f} µs "
          f"({statistics.median(pairs) / WRITES_PER_GROUP:.2f} µs per write); "
          f"the adapter was faster in {sum(p > 0 for p in pairs)} of {len(pairs)} rounds")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
