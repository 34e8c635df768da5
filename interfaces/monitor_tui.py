#!/usr/bin/env python3
"""KSI monitor: agents, completions, the live event stream and the daemon's figures.

    .venv/bin/python interfaces/monitor_tui.py [--socket PATH] [--interval SECONDS]

Keys: q quit, p pause/resume the stream, f filter it by event name, c clear it.
See docs/MONITOR.md.
"""
import sys
from pathlib import Path

# Run as a script from anywhere: the repository root holds the `interfaces` package.
ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from interfaces.monitor.app import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
