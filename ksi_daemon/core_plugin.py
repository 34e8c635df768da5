"""`python -m ksi_daemon.core_plugin --config FILE`: the deployment guide's command (seeds/001).

The daemon in the foreground, as the guide runs it in a terminal: the same as
`python -m ksi_daemon --foreground`, with the same options.
"""
from __future__ import annotations

import sys

from .__main__ import main

if __name__ == "__main__":
    sys.exit(main(["--foreground", *sys.argv[1:]]))
