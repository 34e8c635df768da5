"""What a tool call through the MCP server adds to the event it sends.

    python bench/mcp_bench.py [--calls 300 --rounds 5 --event system:health]

One daemon (every installed plugin with its defaults, in a temporary directory) and, in the
same run, two ways to send the same event one at a time (the next after the last reply):
`direct`, an EventClient over the daemon's socket; `mcp`, the MCP SDK's client calling the
event's tool on interfaces/mcp_server.py (a subprocess over stdio, 2026-07-28 protocol), which
sends the event through its own EventClient. Rounds alternate direct / mcp; each round's figure
is the median latency of its calls; the table shows the medians over rounds and the overhead
per call (mcp - direct). Both clients run in this process: the machine's 2 CPUs carry the
benchmark script, the MCP server and the daemon.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from bench_daemon import DAEMON_ENV, PYTHON, ROOT, start_daemon, stop

from mcp import Client  # noqa: E402  (after bench_daemon put the project on sys.path)
from mcp.client.stdio import StdioServerParameters  # noqa: E402

from ksi_client import EventClient  # noqa: E402

SERVER = ROOT / "interfaces" / "mcp_server.py"


async def timed_calls(call, calls: int) -> float:
    """The median of `calls` sequential calls, in µs."""
    durations = []
    for _ in range(calls):
        started = time.perf_counter()
        await call()
        durations.append(time.perf_counter() - started)
    return statistics.median(durations) * 1e6


async def measure(socket_path: str, event: str, arguments: dict, calls: int,
                  rounds: int) -> tuple[list[float], list[float]]:
    params = StdioServerParameters(command=PYTHON, args=[str(SERVER), "--socket", socket_path,
                                                         "--log-level", "WARNING"],
                                   env=dict(DAEMON_ENV))
    direct_us, mcp_us = [], []
    async with EventClient(socket_path) as direct, Client(params) as host:
        # The tool's name is the daemon's (tools:list); its listing names the event it sends.
        listed = {(t.meta or {}).get("ksi/event"): t.name for t in (await host.list_tools()).tools}
        if event not in listed:
            raise SystemExit(f"the MCP server offers no tool for {event}: {sorted(listed)}")
        tool = listed[event]

        async def by_socket():
            await direct.emit(event, arguments)

        async def by_mcp():
            result = await host.call_tool(tool, arguments)
            if result.is_error:
                raise SystemExit(f"{tool} failed: {result.content[0].text}")

        await timed_calls(by_socket, 50)  # warm-up: connections, caches, first imports
        await timed_calls(by_mcp, 50)
        for _ in range(rounds):
            direct_us.append(await timed_calls(by_socket, calls))
            mcp_us.append(await timed_calls(by_mcp, calls))
    return direct_us, mcp_us


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=300, help="calls per round and way")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--event", default="system:health",
                        choices=["system:health", "state:get"])
    args = parser.parse_args()
    arguments = {"key": "bench", "namespace": "mcp-bench"} if args.event == "state:get" else {}
    with tempfile.TemporaryDirectory(prefix="ksi-mcpb-", dir="/tmp") as tmp:
        proc, socket_path = start_daemon(Path(tmp), {"plugins": {"completion":
                                                                 {"warm_up": False}}})
        try:
            direct_us, mcp_us = asyncio.run(measure(socket_path, args.event, arguments,
                                                    args.calls, args.rounds))
        finally:
            stop(proc)
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print(f"KSI MCP benchmark — {now}, nproc {os.cpu_count()}, Python "
          f"{sys.version.split()[0]}")
    print(f"event {args.event}, {args.calls} sequential calls per round, {args.rounds} rounds "
          "alternating direct/mcp; per round the median latency, below the median of rounds")
    print(f"{'way':8} {'median µs':>10}   rounds (µs)")
    for name, figures in (("direct", direct_us), ("mcp", mcp_us)):
        rounds = " ".join(f"{value:.0f}" for value in figures)
        print(f"{name:8} {statistics.median(figures):>10.0f}   {rounds}")
    overhead = statistics.median(m - d for m, d in zip(mcp_us, direct_us))
    print(f"overhead per call through MCP: {overhead:.0f} µs (median of per-round differences), "
          f"{statistics.median(mcp_us) / statistics.median(direct_us):.1f}× the direct call")


if __name__ == "__main__":
    main()
