#!/usr/bin/env python3
"""The deployment guide's `python tools/monitor_plugin_performance.py`: a live per-plugin
table of the daemon's metrics (interfaces/plugin_performance.py; `--help` for its options)."""
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from interfaces.plugin_performance import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
