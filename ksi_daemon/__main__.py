"""`python -m ksi_daemon [--foreground] [--config PATH]`

Without --foreground the daemon starts in the background (its own session, output to
var/logs/daemon.out) and this command returns once the socket answers `system:health`, or
exits non-zero with the reason the daemon gave.
"""
from __future__ import annotations

import argparse
import os
import sys

# The daemon never needs litellm's network cost map or a model hub: set before anything imports it.
for _name, _value in (("LITELLM_LOCAL_MODEL_COST_MAP", "True"), ("LITELLM_MODE", "PRODUCTION"),
                      ("HF_HUB_OFFLINE", "1")):
    os.environ.setdefault(_name, _value)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m ksi_daemon", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--foreground", action="store_true", help="run attached to this terminal")
    parser.add_argument("--config", help="config file (default ~/.ksi/daemon.json)")
    parser.add_argument("--var-dir", help="runtime data directory (default: the project's var/)")
    parser.add_argument("--socket", dest="socket_path", help="socket path")
    parser.add_argument("--plugin-dir", dest="plugin_dirs", action="append",
                        help="extra plugin directory (repeatable)")
    parser.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from .config import ConfigError, load_config

    overrides = {"var_dir": args.var_dir, "socket_path": args.socket_path,
                 "log_level": args.log_level}
    try:
        config, warnings = load_config(args.config, overrides)
    except ConfigError as exc:
        print(f"ksi: {exc}", file=sys.stderr)
        return 1
    if args.plugin_dirs:
        config["daemon"]["plugin_dirs"] += args.plugin_dirs
    if not args.foreground:
        from .launcher import start_in_background
        return start_in_background(config, sys.argv[1:] if argv is None else argv)
    return run_foreground(config, warnings)


def run_foreground(config: dict, warnings: list[str]) -> int:
    from pathlib import Path

    import uvloop

    from .daemon import (AlreadyRunning, Daemon, InstanceLock, exit_past_running_threads,
                         prepare_run_dir)
    from .logging_setup import configure_logging
    from . import private_files

    settings = config["daemon"]
    private_files.keep_private_from_now_on()  # before anything under var/ is created
    tightened, not_tightened = private_files.make_private(Path(settings["var_dir"]))
    configure_logging(Path(settings["var_dir"]) / "logs", settings["log_level"], console=True)
    import structlog
    log = structlog.get_logger("ksi.daemon")
    for warning in warnings:
        log.warning("config_warning", message=warning)
    private_files.report(log, tightened, not_tightened)
    lock = InstanceLock(settings["socket_path"])
    try:
        prepare_run_dir(settings["socket_path"])
        lock.acquire()
    except (AlreadyRunning, OSError) as exc:
        print(f"ksi: {exc}", file=sys.stderr)
        return 2
    try:
        code = uvloop.run(Daemon(config).run())
    finally:
        lock.release()
    return exit_past_running_threads(code)


if __name__ == "__main__":
    sys.exit(main())
