"""`status` and `health`: what the daemon says about itself, or why it says nothing."""
from __future__ import annotations

import argparse

import orjson

from ..launcher import failed_plugin_lines
from .asking import DaemonRefused, DaemonUnreachable, health_or_none, query
from .output import EXIT_FAILED, EXIT_OK, error, format_duration, print_fields
from .process import lock_holder, pid_file, read_pid_file

STATUS_STALE_PID_FILE, STATUS_NOT_RUNNING, STATUS_NOT_ANSWERING = 1, 3, 4


def health(config: dict, args: argparse.Namespace) -> int:
    socket_path = config["daemon"]["socket_path"]
    try:
        data = query(socket_path, "system:health", timeout=args.timeout)
    except DaemonUnreachable as exc:
        error(f"KSI is not running or not answering: {exc}")
        return EXIT_FAILED
    except DaemonRefused as exc:
        error(str(exc))
        return EXIT_FAILED
    if args.json:
        print(orjson.dumps(data).decode())
        return EXIT_OK
    counts = data.get("plugins", {})
    rows = [("status", data.get("status")), ("pid", data.get("pid")),
            ("uptime", format_duration(data.get("uptime_s", 0))),
            ("version", data.get("version")),
            ("plugins", f"{counts.get('active', 0)} active, {counts.get('failed', 0)} failed"),
            ("connections", f"{data.get('connections')} (including this one)"),
            ("socket", socket_path)]
    rows += [("failed", line) for line in failed_plugin_lines(data.get("failed_plugins") or [])]
    print_fields(rows)
    return EXIT_OK


def status(config: dict, args: argparse.Namespace) -> int:
    socket_path = config["daemon"]["socket_path"]
    data = health_or_none(socket_path, args.timeout)
    if data is None:
        return report_not_running(config, args.json)
    try:
        plugins = query(socket_path, "system:plugins", timeout=args.timeout).get("plugins", [])
        plugins_error = None
    except (DaemonUnreachable, DaemonRefused) as exc:
        plugins, plugins_error = None, str(exc)
    if args.json:
        report = {"running": True, "pid": data.get("pid"), "uptime_s": data.get("uptime_s"),
                  "socket": socket_path, "version": data.get("version"),
                  "connections": data.get("connections"), "plugin_counts": data.get("plugins"),
                  "plugins": plugins}
        if plugins_error:
            report["plugins_error"] = plugins_error
        print(orjson.dumps(report).decode())
        return EXIT_OK
    counts = data.get("plugins", {})
    print("KSI is running")
    print_fields([("pid", data.get("pid")), ("uptime", format_duration(data.get("uptime_s", 0))),
                  ("socket", socket_path), ("version", data.get("version")),
                  ("connections", f"{data.get('connections')} (including this one)"),
                  ("plugins", f"{counts.get('active', 0)} active, "
                              f"{counts.get('failed', 0)} failed")],
                 indent="  ")
    print()
    if plugins is None:
        error(f"could not list the plugins: {plugins_error}")
    else:
        print_plugin_table(plugins)
    return EXIT_OK


def report_not_running(config: dict, as_json: bool) -> int:
    socket_path = config["daemon"]["socket_path"]
    holder = lock_holder(socket_path)
    stale_pid = read_pid_file(config)
    if holder is not None:
        code = STATUS_NOT_ANSWERING
        reason = (f"pid {holder or 'unknown'} holds the daemon's lock but does not answer on "
                  f"{socket_path} (starting, or stuck)")
    elif stale_pid is not None:
        code = STATUS_STALE_PID_FILE
        reason = (f"not running, but {pid_file(config)} names pid {stale_pid}: the daemon "
                  "died without cleaning up")
    else:
        code = STATUS_NOT_RUNNING
        reason = f"not running (nothing on {socket_path})"
    if as_json:
        print(orjson.dumps({"running": False, "socket": socket_path, "pid": holder or None,
                            "reason": reason}).decode())
    else:
        print(f"KSI is {reason}" if code != STATUS_NOT_ANSWERING else f"KSI: {reason}")
    return code


def error_and_place(plugin: dict) -> str:
    """A plugin's error as one table cell: its first line, and the file:line where it arose
    when the daemon knows it (`status --json` has the whole error)."""
    error = (plugin.get("error") or "").split("\n", 1)[0]
    return f"{error} (at {plugin['where']})" if error and plugin.get("where") else error


def print_plugin_table(plugins: list[dict]) -> None:
    header = ("PLUGIN", "VERSION", "STATE", "LOAD", "ERROR")
    rows = [(p.get("name", "?"), p.get("version", ""), p.get("state", "?"),
             f"{p.get('load_ms', 0):.1f} ms", error_and_place(p)) for p in plugins]
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(4)]
    for row in [header, *rows]:
        cells = [f"{str(cell):<{width}}" for cell, width in zip(row, widths)]
        print("  ".join([*cells, row[4]]).rstrip())
