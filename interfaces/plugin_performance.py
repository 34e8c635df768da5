#!/usr/bin/env python3
"""A live per-plugin table in the terminal: events/s, p50/p95/p99, errors, queue depth.

    .venv/bin/python interfaces/plugin_performance.py [--socket PATH] [--interval 1] [--once]
    python tools/monitor_plugin_performance.py      (the deployment guide's name for it)

It reads `system:metrics` once per interval (docs/OPERATIONS.md, "Metrics") and redraws the
table; `--once` prints one table and exits. Ctrl-C stops it.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import NamedTuple

# Run as a script from anywhere: the repository root holds the `interfaces` package.
ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from interfaces.options import add_socket_option  # noqa: E402
from ksi_client import KSIError, SyncEventClient  # noqa: E402

HEADER = ("plugin", "events/s", "p50 ms", "p95 ms", "p99 ms", "requests", "errors", "queued")
CLEAR_SCREEN = "\x1b[H\x1b[2J"


class Row(NamedTuple):
    plugin: str
    events_per_s: float | None
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    requests: int
    errors: int
    queued: int  # every queue the plugin reports, added up


def rows_of(metrics: dict) -> list[Row]:
    """One row per plugin of a `system:metrics` reply, busiest first."""
    rows = [Row(name, figures.get("events_per_s"), figures.get("p50_ms"), figures.get("p95_ms"),
                figures.get("p99_ms"), figures.get("count", 0), figures.get("errors", 0),
                sum((figures.get("queues") or {}).values()))
            for name, figures in (metrics.get("plugins") or {}).items()]
    return sorted(rows, key=lambda row: (-(row.events_per_s or 0), -row.requests, row.plugin))


def table_text(metrics: dict) -> str:
    """The table, and a line of daemon-wide figures under it."""
    cells = [HEADER] + [(row.plugin, _number(row.events_per_s, 1), _number(row.p50_ms, 2),
                         _number(row.p95_ms, 2), _number(row.p99_ms, 2), str(row.requests),
                         str(row.errors), str(row.queued)) for row in rows_of(metrics)]
    widths = [max(len(line[i]) for line in cells) for i in range(len(HEADER))]
    lines = ["  ".join(cell.ljust(widths[0]) if i == 0 else cell.rjust(widths[i])
                       for i, cell in enumerate(line)) for line in cells]
    lines.insert(1, "-" * len(lines[0]))
    queues = metrics.get("queues") or {}
    lines.append("")
    lines.append(f"all: {_number(metrics.get('events_per_s'), 1)} events/s, "
                 f"{metrics.get('events_total', 0)} events, "
                 f"{metrics.get('connections', 0)} connections, "
                 f"{queues.get('in_flight_requests', 0)} in flight, "
                 f"rss {(metrics.get('rss_bytes') or 0) / 2**20:.0f} MiB")
    return "\n".join(lines)


def _number(value: float | None, decimals: int) -> str:
    return "-" if value is None else f"{value:.{decimals}f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="A live per-plugin table of the daemon's "
                                     "metrics.")
    add_socket_option(parser)
    parser.add_argument("--interval", type=float, default=1.0, metavar="SECONDS",
                        help="seconds between refreshes (default 1)")
    parser.add_argument("--once", action="store_true", help="print one table and exit")
    args = parser.parse_args(argv)
    redraw = sys.stdout.isatty() and not args.once
    try:
        with SyncEventClient(args.socket, timeout=10) as client:
            while True:
                text = table_text(client.emit("system:metrics"))
                print(CLEAR_SCREEN + text if redraw else text, flush=True)
                if args.once:
                    return 0
                time.sleep(args.interval)
                if not redraw:
                    print()
    except KSIError as exc:
        print(f"plugin performance: {exc.code}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
