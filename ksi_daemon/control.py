"""`daemon_control.py start|stop|restart|status|health|logs|migrate-state`: run the daemon.

The socket path is resolved exactly as the daemon resolves it (defaults < config file < KSI_*
environment < command line), so this command finds the daemon that `start` started.

Exit codes: 0 success; 1 failure (the reason is on stderr); 2 usage error or a missing feature;
`status` follows the LSB convention: 0 running, 1 dead with a stale pid file, 3 not running,
4 a process holds the daemon's lock but does not answer.
"""
from __future__ import annotations

import argparse
import fcntl
import os
import signal
import sys
import time
from pathlib import Path

import orjson

from .config import ConfigError, load_config
from .launcher import ask, start_in_background

PROJECT_ROOT = Path(__file__).resolve().parent.parent
QUERY_TIMEOUT_S = 5.0
# How long `stop` waits after system:shutdown beyond the shutdown deadline the daemon was given
# (plugins still checkpoint and close after in-flight work has drained), then after each signal.
SHUTDOWN_MARGIN_S = 5.0
SIGTERM_GRACE_S = 5.0
SIGKILL_GRACE_S = 5.0
POLL_INTERVAL_S = 0.05

EXIT_OK, EXIT_FAILED, EXIT_UNAVAILABLE = 0, 1, 2
STATUS_STALE_PID_FILE, STATUS_NOT_RUNNING, STATUS_NOT_ANSWERING = 1, 3, 4


class DaemonUnreachable(Exception):
    """Nothing answers on the socket; the message says why, for people."""


class DaemonRefused(Exception):
    """The daemon answered with an error reply."""


def error(message: str) -> None:
    print(f"ksi: {message}", file=sys.stderr, flush=True)


# --- talking to the daemon ----------------------------------------------------------------------

def query(socket_path: str, event: str, data: dict | None = None,
          timeout: float = QUERY_TIMEOUT_S) -> dict:
    """The reply data of one request; DaemonUnreachable or DaemonRefused otherwise."""
    if not os.path.exists(socket_path):
        raise DaemonUnreachable(f"no socket at {socket_path}")
    try:
        reply = ask(socket_path, event, data, timeout=timeout)
    except (OSError, ValueError) as exc:
        raise DaemonUnreachable(f"cannot talk to {socket_path}: {exc}") from None
    if "error" in reply:
        problem = reply["error"]
        raise DaemonRefused(f"{event} failed: {problem.get('code')}: {problem.get('message')}")
    return reply.get("data") or {}


def health_or_none(socket_path: str) -> dict | None:
    try:
        return query(socket_path, "system:health")
    except (DaemonUnreachable, DaemonRefused):
        return None


# --- finding the daemon's process without asking it ----------------------------------------------

def lock_holder(socket_path: str) -> int | None:
    """The pid holding the daemon's single-instance lock (0 if unreadable), or None if free.

    Probing takes a shared lock for a few microseconds: a daemon starting in exactly that
    window would refuse as "already running". Only the socket's owner can probe, so no other
    user can keep a daemon from starting this way.
    """
    path = socket_path + ".lock"
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.read(fd, 32).decode(errors="replace").strip()
            return int(text) if text.isdigit() else 0
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def process_is_gone(pid: int) -> bool:
    """True once pid has exited; a zombie counts as gone (its parent may never reap it)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    state = stat.rsplit(")", 1)[-1].split()[0]
    return state in ("Z", "X")


def wait_until_gone(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while not process_is_gone(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL_INTERVAL_S)
    return True


def pid_file(config: dict) -> Path:
    return Path(config["daemon"]["var_dir"]) / "run" / "daemon.pid"


# --- verbs ----------------------------------------------------------------------------------------

def start(config: dict, args: argparse.Namespace) -> int:
    socket_path = config["daemon"]["socket_path"]
    health = health_or_none(socket_path)
    if health is not None:
        error(f"KSI is already running (pid {health.get('pid')}) on {socket_path}")
        return EXIT_FAILED
    holder = lock_holder(socket_path)
    if holder is not None:
        error(f"KSI is already running (pid {holder or 'unknown'}) on {socket_path}, but it does "
              "not answer yet: it is starting or stuck (see `daemon_control.py logs`; "
              "`daemon_control.py stop` ends it)")
        return EXIT_FAILED
    log_file = Path(config["daemon"]["var_dir"]) / "logs" / "daemon.log"
    print(f"Starting the KSI daemon (log: {log_file}) ...", flush=True)
    code = start_in_background(config, daemon_arguments(config, args))
    if code != 0:
        return code
    print_how_to_talk(socket_path)
    return EXIT_OK


def daemon_arguments(config: dict, args: argparse.Namespace) -> list[str]:
    """The command line that makes the daemon resolve the same configuration we did."""
    argv = []
    if args.config:
        argv += ["--config", str(Path(args.config).expanduser().absolute())]
    if args.var_dir:
        argv += ["--var-dir", config["daemon"]["var_dir"]]
    if args.socket:
        argv += ["--socket", config["daemon"]["socket_path"]]
    return argv


def print_how_to_talk(socket_path: str) -> None:
    chat = PROJECT_ROOT / "interfaces" / "chat.py"
    chat_shown = "interfaces/chat.py" if Path.cwd() == PROJECT_ROOT else str(chat)
    python = python_command()
    # Clients find the socket the way the protocol says (KSI_SOCKET_PATH, KSI_VAR_DIR, ./var);
    # only when --config/--var-dir/--socket moved it must they be told where it is.
    env_prefix = "" if os.path.realpath(socket_path) == socket_clients_would_find() else \
        f"KSI_SOCKET_PATH={socket_path} "
    # The chat script arrives with its own issue: only advertise what is there.
    chat_line = f"\n  chat:          {env_prefix}{python} {chat_shown}" if chat.exists() else ""
    print(f"""
Talk to it:
  raw protocol:  echo '{{"event":"system:health"}}' | nc -U {socket_path}{chat_line}
  Python (in `{python} -m asyncio`, which allows top-level await):
    from ksi_client import EventClient
    async with EventClient(socket_path="{socket_path}") as client:
        print(await client.emit("system:health"))

Stop it with `daemon_control.py stop`; see its log with `daemon_control.py logs -f`.""",
          flush=True)


def python_command() -> str:
    """`python` if that is this interpreter (an activated venv), else this interpreter's path."""
    activated = sys.prefix != sys.base_prefix and os.environ.get("VIRTUAL_ENV") == sys.prefix
    return "python" if activated else sys.executable


def socket_clients_would_find() -> str:
    from ksi_client import find_socket_path  # the client's own discovery rule, not a copy
    return os.path.realpath(find_socket_path())


def stop(config: dict, args: argparse.Namespace) -> int:
    socket_path = config["daemon"]["socket_path"]
    health = health_or_none(socket_path)
    pid = health.get("pid") if health else lock_holder(socket_path)
    if pid is None:
        print(f"KSI is not running (nothing on {socket_path}); nothing to stop.")
        return EXIT_OK
    if not pid:
        error(f"a process holds {socket_path}.lock but its pid is unknown; cannot stop it")
        return EXIT_FAILED
    if health is not None:
        timeout = args.timeout if args.timeout is not None else \
            config["daemon"]["shutdown_timeout"]
        if ask_to_shut_down(socket_path, pid, args.timeout, timeout + SHUTDOWN_MARGIN_S):
            return EXIT_OK
    else:
        print(f"KSI (pid {pid}) holds the lock on {socket_path} but does not answer.")
    if signal_and_wait(pid, signal.SIGTERM, SIGTERM_GRACE_S):
        print(f"KSI stopped (pid {pid}) after SIGTERM.")
        return EXIT_OK
    if signal_and_wait(pid, signal.SIGKILL, SIGKILL_GRACE_S):
        remove_leftovers(config)
        print(f"KSI killed (pid {pid}) with SIGKILL; it did not shut down cleanly, so in-flight "
              "work was lost (see `daemon_control.py logs`).")
        return EXIT_OK
    error(f"KSI (pid {pid}) is still running after SIGKILL; it could not be stopped")
    return EXIT_FAILED


def ask_to_shut_down(socket_path: str, pid: int, timeout: float | None, wait_s: float) -> bool:
    data = {"timeout_s": timeout} if timeout is not None else {}
    try:
        query(socket_path, "system:shutdown", data)
        print(f"Asked KSI (pid {pid}) to shut down; waiting up to {wait_s:g} s ...", flush=True)
    except (DaemonUnreachable, DaemonRefused) as exc:
        # It may have started shutting down on its own meanwhile: waiting still tells us.
        print(f"system:shutdown was not acknowledged ({exc}); waiting up to {wait_s:g} s ...",
              flush=True)
    if wait_until_gone(pid, wait_s):
        print(f"KSI stopped (pid {pid}).")
        return True
    print(f"KSI (pid {pid}) did not exit within {wait_s:g} s.", flush=True)
    return False


def signal_and_wait(pid: int, signum: int, wait_s: float) -> bool:
    name = signal.Signals(signum).name
    print(f"Sending {name} to pid {pid} and waiting up to {wait_s:g} s ...", flush=True)
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        return True
    except PermissionError:
        error(f"not allowed to send {name} to pid {pid} (another user's process?)")
        return False
    return wait_until_gone(pid, wait_s)


def remove_leftovers(config: dict) -> None:
    """A killed daemon leaves its socket and pid file; remove them once its lock is free."""
    socket_path = config["daemon"]["socket_path"]
    if lock_holder(socket_path) is not None:
        return
    for path in (Path(socket_path), pid_file(config)):
        if path.exists():
            path.unlink(missing_ok=True)
            print(f"Removed the stale {path}.")


def restart(config: dict, args: argparse.Namespace) -> int:
    code = stop(config, args)
    if code != EXIT_OK:
        error("not starting again because the running daemon could not be stopped")
        return code
    return start(config, args)


def health(config: dict, args: argparse.Namespace) -> int:
    socket_path = config["daemon"]["socket_path"]
    try:
        data = query(socket_path, "system:health")
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
    print_fields(rows)
    return EXIT_OK


def status(config: dict, args: argparse.Namespace) -> int:
    socket_path = config["daemon"]["socket_path"]
    data = health_or_none(socket_path)
    if data is None:
        return report_not_running(config, args.json)
    try:
        plugins = query(socket_path, "system:plugins").get("plugins", [])
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


def read_pid_file(config: dict) -> int | None:
    try:
        text = pid_file(config).read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def print_fields(rows: list[tuple[str, object]], indent: str = "") -> None:
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{indent}{name:<{width}}  {value}")


def print_plugin_table(plugins: list[dict]) -> None:
    header = ("PLUGIN", "VERSION", "STATE", "LOAD", "ERROR")
    rows = [(p.get("name", "?"), p.get("version", ""), p.get("state", "?"),
             f"{p.get('load_ms', 0):.1f} ms", p.get("error") or "") for p in plugins]
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(4)]
    for row in [header, *rows]:
        cells = [f"{str(cell):<{width}}" for cell, width in zip(row, widths)]
        print("  ".join([*cells, row[4]]).rstrip())


def format_duration(seconds: float) -> str:
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours:02d}h {minutes:02d}m"
    if hours:
        return f"{hours}h {minutes:02d}m {secs:02d}s"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


# --- logs -----------------------------------------------------------------------------------------

def logs(config: dict, args: argparse.Namespace) -> int:
    log_file = Path(config["daemon"]["var_dir"]) / "logs" / "daemon.log"
    show = (lambda line: line) if args.raw else render_log_line
    try:
        file = open(log_file, "rb")
    except FileNotFoundError:
        error(f"no log file at {log_file} (has the daemon been started with this var directory?)")
        return EXIT_FAILED
    try:
        # One open file for both parts, so no line written in between is missed.
        for line in last_lines(file, args.lines):
            print(show(line))
        sys.stdout.flush()
        if args.follow:
            follow(log_file, file, show)
    except KeyboardInterrupt:
        pass
    except BrokenPipeError:
        # The reader (`| head`) went away: that is not an error of ours.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    finally:
        file.close()
    return EXIT_OK


def last_lines(file, count: int, block: int = 65536) -> list[str]:
    """The last `count` lines, read backwards so a large log costs only what is shown.

    Leaves the file positioned at the end it saw, where following continues.
    """
    end = file.seek(0, os.SEEK_END)
    position, data = end, b""
    while count > 0 and position > 0 and data.count(b"\n") <= count:
        step = min(block, position)
        position -= step
        file.seek(position)
        data = file.read(step) + data
    file.seek(end)
    lines = data.decode(errors="replace").splitlines()
    return lines[-count:] if count > 0 else []


def follow(path: Path, file, show) -> None:
    """Print lines as they are appended; start over when the file is replaced or truncated."""
    partial = b""
    while True:
        chunk = file.readline()
        if chunk:
            partial += chunk
            if partial.endswith(b"\n"):
                print(show(partial.decode(errors="replace").rstrip("\n")), flush=True)
                partial = b""
            continue
        if was_replaced(path, file):
            file.close()
            file = open(path, "rb")
            partial = b""
            continue
        time.sleep(0.2)


def was_replaced(path: Path, file) -> bool:
    try:
        current = path.stat()
    except FileNotFoundError:
        return False  # being rotated: keep reading the old file until the new one appears
    opened = os.fstat(file.fileno())
    return current.st_ino != opened.st_ino or current.st_size < file.tell()


def render_log_line(line: str) -> str:
    """A JSON log line as `time level event key=value ...`; other lines unchanged."""
    try:
        entry = orjson.loads(line)
    except orjson.JSONDecodeError:
        return line
    if not isinstance(entry, dict):
        return line
    timestamp = str(entry.pop("timestamp", ""))
    level = str(entry.pop("level", "")).upper()
    event = str(entry.pop("event", ""))
    trace = entry.pop("exception", None)
    fields = " ".join(f"{key}={format_value(value)}" for key, value in entry.items())
    text = " ".join(part for part in (timestamp, f"{level:<7}", event, fields) if part)
    return f"{text}\n{trace}" if trace else text


def format_value(value) -> str:
    if isinstance(value, str) and value and not any(c.isspace() or c in "\"=" for c in value):
        return value
    return orjson.dumps(value, default=str).decode()


# --- migrate-state --------------------------------------------------------------------------------

def migrate_state(config: dict, args: argparse.Namespace) -> int:
    try:
        from .plugins.state import migrate
    except ImportError as exc:
        error("state migration is not available in this installation "
              f"(cannot import ksi_daemon.plugins.state.migrate: {exc})")
        return EXIT_UNAVAILABLE
    # The migration finds the state database under $KSI_VAR_DIR unless told --db/--var-dir:
    # give it the var directory the daemon would use, wherever that was configured.
    os.environ["KSI_VAR_DIR"] = config["daemon"]["var_dir"]
    code = migrate.main(["--from", args.source, *args.extra])
    return int(code or 0)


# --- command line ---------------------------------------------------------------------------------

VERBS = {"start": start, "stop": stop, "restart": restart, "status": status, "health": health,
         "logs": logs, "migrate-state": migrate_state}


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", help="config file (default ~/.ksi/daemon.json or $KSI_CONFIG)")
    common.add_argument("--var-dir", help="runtime data directory (default ./var or $KSI_VAR_DIR)")
    common.add_argument("--socket", help="socket path (default <var-dir>/run/daemon.sock)")
    parser = argparse.ArgumentParser(prog="daemon_control.py", description=__doc__,
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
    log_verb = verbs.add_parser("logs", parents=[common], help="show var/logs/daemon.log")
    log_verb.add_argument("-n", "--lines", type=int, default=50, help="how many lines (50)")
    log_verb.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
    log_verb.add_argument("--raw", action="store_true", help="the JSON lines as written")
    migrate_verb = verbs.add_parser("migrate-state", parents=[common],
                                    help="import state from an older KSI installation")
    migrate_verb.add_argument("--from", dest="source", required=True, metavar="PATH",
                              help="the old state to import")
    migrate_verb.epilog = "Other options (--db FILE, --synchronous ...) go to the migration."
    return parser


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
        return VERBS[args.verb](config, args)
    except KeyboardInterrupt:
        error("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
