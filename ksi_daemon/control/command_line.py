"""The command line: one sub-command per verb, the configuration resolved once, then the verb."""
from __future__ import annotations

import argparse
import os
import signal
import sys

from ..config import ConfigError, load_config
from .asking import QUERY_TIMEOUT_S
from .backup import backup
from .cluster_dev import cluster_dev
from .install_service import install_service
from .logs import logs
from .migrate_state import migrate_state
from .new_plugin import new_plugin
from .output import EXIT_FAILED, error
from .restore import restore
from .status import health, status
from .stop import restart, stop
from .start import start

VERBS = {"start": start, "stop": stop, "restart": restart, "status": status, "health": health,
         "logs": logs, "migrate-state": migrate_state, "backup": backup, "restore": restore,
         "install-service": install_service, "new-plugin": new_plugin,
         "cluster-dev": cluster_dev}


def build_parser() -> argparse.ArgumentParser:
    from . import __doc__ as description
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", help="config file (default ~/.ksi/daemon.json or $KSI_CONFIG)")
    common.add_argument("--var-dir", help="runtime data directory (default $KSI_VAR_DIR, "
                                            "else the project's var/)")
    common.add_argument("--socket", help="socket path (default <var-dir>/run/daemon.sock)")
    parser = argparse.ArgumentParser(prog="daemon_control.py", description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    verbs.add_parser("start", parents=[common], help="start the daemon in the background")
    for name, summary in (("stop", "stop the daemon: system:shutdown, then SIGTERM, then SIGKILL"),
                          ("restart", "stop, then start")):
        verb = verbs.add_parser(name, parents=[common], help=summary)
        verb.add_argument("--timeout", type=non_negative_seconds,
                          help="seconds in-flight work may take to finish "
                               "(default: daemon.shutdown_timeout)")
    for name, summary in (("status", "pid, uptime, socket, version and plugins"),
                          ("health", "the daemon's system:health reply")):
        verb = verbs.add_parser(name, parents=[common], help=summary)
        verb.add_argument("--json", action="store_true", help="one JSON object, for scripts")
        verb.add_argument("--timeout", type=positive_seconds, default=QUERY_TIMEOUT_S,
                          metavar="SECONDS", help="how long to wait for the daemon's answer "
                                                  f"(default {QUERY_TIMEOUT_S:g})")
    log_verb = verbs.add_parser("logs", parents=[common], help="show var/logs/daemon.log")
    log_verb.add_argument("-n", "--lines", type=int, default=50, help="how many lines (50)")
    log_verb.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
    log_verb.add_argument("--raw", action="store_true", help="the JSON lines as written")
    log_verb.add_argument("--audit", action="store_true",
                          help="the state audit instead: changes and permission refusals, "
                               "with who (uid, pid, agent); --raw for JSON lines")
    migrate_verb = verbs.add_parser("migrate-state", parents=[common],
                                    help="import state from an older KSI installation")
    migrate_verb.add_argument("--from", dest="source", required=True, metavar="PATH",
                              help="the old state to import")
    migrate_verb.epilog = "Other options (--db FILE, --synchronous ...) go to the migration."
    backup_verb = verbs.add_parser("backup", parents=[common],
                                   help="copy every database under var/, also while it runs")
    backup_verb.add_argument("directory", nargs="?", metavar="DIR",
                             help="where the timestamped backup goes (default var/backups/)")
    restore_verb = verbs.add_parser("restore", parents=[common],
                                    help="put a backup's databases back (daemon stopped)")
    restore_verb.add_argument("directory", metavar="DIR", help="a directory `backup` wrote")
    service_verb = verbs.add_parser("install-service", parents=[common],
                                    help="write a systemd user unit, ksi.service")
    service_verb.add_argument("--dry-run", action="store_true", help="print it, write nothing")
    service_verb.add_argument("--force", action="store_true",
                              help="replace a ksi.service that differs")
    plugin_verb = verbs.add_parser("new-plugin", parents=[common],
                                   help="write a runnable plugin and its test")
    plugin_verb.add_argument("name", metavar="NAME", help="the plugin's name and namespace")
    plugin_verb.add_argument("--dir", metavar="DIR",
                             help="the plugin directory it goes in (default ~/.ksi/plugins)")
    cluster_verb = verbs.add_parser("cluster-dev", parents=[common],
                                    help="a local nats-server and N daemons to try cluster mode")
    cluster_verb.add_argument("what", metavar="N|stop",
                              help="how many nodes to start, or `stop` to stop them")
    return parser


def positive_seconds(text: str) -> float:
    value = non_negative_seconds(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be more than 0 seconds")
    return value


def non_negative_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if value < 0 or value != value:
        raise argparse.ArgumentTypeError("must be 0 or more seconds")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.verb != "migrate-state":
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.extra = extra
    overrides = {"var_dir": args.var_dir, "socket_path": args.socket}
    try:
        config, warnings = load_config(args.config, overrides)
    except ConfigError as exc:
        error(str(exc))
        return EXIT_FAILED
    if args.verb in ("start", "restart"):
        for warning in warnings:
            error(f"warning: {warning}")
    try:
        code = VERBS[args.verb](config, args)
        sys.stdout.flush()  # here, so a reader that left is noticed while we can still say so
        return code
    except BrokenPipeError:
        return quietly_after_the_reader_left()
    except KeyboardInterrupt:
        error("interrupted")
        return 130


def quietly_after_the_reader_left() -> int:
    """`status | head -1`: the reader has what it wanted; end as a Unix tool ends on SIGPIPE.

    Output still buffered would raise again when the interpreter flushes at exit, so stdout
    now points at /dev/null; the exit code is the shell's for a process killed by SIGPIPE.
    """
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 128 + signal.SIGPIPE
