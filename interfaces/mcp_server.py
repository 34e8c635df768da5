#!/usr/bin/env python3
"""KSI's events as MCP tools, over stdio, for Claude Code and any MCP host.

    .venv/bin/python interfaces/mcp_server.py [--socket PATH] [--allow PATTERN] [--deny PATTERN]

See docs/MCP.md.
"""
import sys
from pathlib import Path

# Run as a script from anywhere: the repository root holds the `interfaces` package.
ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from interfaces.mcp_bridge.main import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
