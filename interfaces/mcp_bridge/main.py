"""`interfaces/mcp_server.py`: the command line of the MCP server over stdio.

stdout carries MCP and nothing else (the SDK's stdio server also points fd 1 at stderr while it
serves, so a stray print cannot corrupt the stream); logs go to stderr.
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import sys

import anyio
from mcp.server.stdio import stdio_server

from ksi_mcp.catalog import Exposure
from ksi_mcp.server import FOLLOWED, ToolServer

from ..options import add_socket_option
from .link import DaemonLink

DEFAULT_CALL_TIMEOUT_S = 120.0


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="mcp_server.py",
        description="Serve a running KSI daemon's events as MCP tools over stdio.")
    add_socket_option(parser)
    parser.add_argument("--allow", action="append", default=[], metavar="PATTERN",
                        help="offer only the events matching PATTERN (fnmatch, e.g. 'state:*'; "
                             "repeatable); an explicit-only event (system:shutdown, "
                             "state:clear, internal events) needs its exact name")
    parser.add_argument("--deny", action="append", default=[], metavar="PATTERN",
                        help="never offer the events matching PATTERN (repeatable)")
    parser.add_argument("--timeout", type=float, default=DEFAULT_CALL_TIMEOUT_S,
                        metavar="SECONDS", help="how long a tool call waits for the daemon's "
                                                "reply (default %(default)s)")
    parser.add_argument("--log-level", default="INFO",
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    args = parser.parse_args(argv)
    if args.timeout <= 0:
        parser.error("--timeout must be a positive number of seconds")
    return args


async def serve(args: argparse.Namespace) -> None:
    server: ToolServer | None = None  # the link and the server need each other

    async def connected() -> None:
        await server.refresh_catalog()  # a new daemon may have other plugins

    async def pushed(event) -> None:
        await server.on_push(event)

    link = DaemonLink(args.socket, patterns=FOLLOWED, on_connected=connected, on_push=pushed)
    server = ToolServer(link, Exposure(tuple(args.allow), tuple(args.deny)),
                        call_timeout_s=args.timeout, version=_version())
    follower = asyncio.create_task(link.follow())
    try:
        async with stdio_server() as (read_stream, write_stream):
            await server.mcp.run(read_stream, write_stream, server.initialization_options())
    finally:
        follower.cancel()
        await link.close()


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("ksi")
    except PackageNotFoundError:
        return ""


def main(argv: list[str] | None = None) -> int:
    args = parse_arguments(argv)
    logging.basicConfig(stream=sys.stderr, level=args.log_level,
                        format="%(asctime)s mcp_server %(levelname)s %(message)s")
    try:
        anyio.run(serve, args)
    except KeyboardInterrupt:
        pass
    return 0
