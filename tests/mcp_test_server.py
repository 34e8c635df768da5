"""A small MCP server for the tests, written with the official SDK (`mcp`'s MCPServer).

    python tests/mcp_test_server.py [--pid-file PATH] [--refuse-if PATH] [--http PORT]

Tools: `echo {text}` answers the text back, `add {a, b}` the sum, `fail {}` a tool error,
`slow {seconds}` sleeps first. `--pid-file` gets this process's pid (the tests check that the
daemon's server process is gone); when the file `--refuse-if` names exists, the server exits at
once instead of serving (a server that cannot start); `--http PORT` serves streamable HTTP on
127.0.0.1 instead of stdio.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import sys


def options_of(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pid-file")
    parser.add_argument("--refuse-if")
    parser.add_argument("--http", type=int)
    return parser.parse_args(argv)


# A server that cannot start exits before importing the SDK (a second or more of a loaded
# machine), so the daemon sees it fail well within a tool call's timeout.
if __name__ == "__main__":
    OPTIONS = options_of(sys.argv[1:])
    if OPTIONS.refuse_if and os.path.exists(OPTIONS.refuse_if):
        sys.exit(3)

from mcp.server.mcpserver import MCPServer  # noqa: E402
from mcp.server.mcpserver.exceptions import ToolError  # noqa: E402

server = MCPServer("ksi-test-tools", log_level="WARNING")


@server.tool()
def echo(text: str) -> str:
    """Answer the text back, prefixed with this server's pid."""
    return f"echo from {os.getpid()}: {text}"


@server.tool()
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@server.tool()
def fail() -> str:
    """Always fail (a ToolError: its message reaches the client)."""
    raise ToolError("this tool always fails")


@server.tool()
async def slow(seconds: float) -> str:
    """Sleep, then answer."""
    await asyncio.sleep(seconds)
    return "done"


def main(options: argparse.Namespace) -> None:
    if options.pid_file:
        with open(options.pid_file, "w") as out:
            out.write(str(os.getpid()))
    if options.http:
        server.run("streamable-http", host="127.0.0.1", port=options.http)
    else:
        server.run("stdio")


if __name__ == "__main__":
    main(OPTIONS)
