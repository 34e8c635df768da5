"""`daemon_control.py start|stop|restart|status|health|logs|migrate-state|backup|restore|
install-service|new-plugin`: run the daemon.

The socket path is resolved exactly as the daemon resolves it (defaults < config file < KSI_*
environment < command line), so this command finds the daemon that `start` started.

Exit codes: 0 success; 1 failure (the reason is on stderr); 2 usage error or a missing feature;
`status` follows the LSB convention: 0 running, 1 dead with a stale pid file, 3 not running,
4 a process holds the daemon's lock but does not answer.

One module per verb (or small group of verbs), beside what they share:
`asking` (one request to the daemon), `process` (finding its process without asking it),
`remembered` (what `start` was given, for `restart`),
`output` (how results are printed), `command_line` (the parser and `main`).
"""
from .command_line import main

__all__ = ["main"]
