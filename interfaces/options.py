"""Command-line options every interface shares, worded once."""
from __future__ import annotations

import argparse


def add_socket_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--socket", metavar="PATH",
                        help="the daemon's socket (default: KSI_SOCKET_PATH, then "
                             "$KSI_VAR_DIR/run/daemon.sock, then the project's "
                             "var/run/daemon.sock)")
