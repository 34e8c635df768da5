"""`start`: run the daemon in the background, then say how to talk to it."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ..launcher import start_in_background
from .asking import health_or_none
from .output import EXIT_FAILED, EXIT_OK, error
from .process import lock_holder
from .remembered import remember_start

PROJECT_ROOT = Path(__file__).resolve().parents[2]


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
    remember_start(config, absolute_config_file(args))
    print_how_to_talk(socket_path)
    return EXIT_OK


def daemon_arguments(config: dict, args: argparse.Namespace) -> list[str]:
    """The command line that makes the daemon resolve the same configuration we did."""
    argv = []
    if args.config:
        argv += ["--config", absolute_config_file(args)]
    if args.var_dir:
        argv += ["--var-dir", config["daemon"]["var_dir"]]
    if args.socket:
        argv += ["--socket", config["daemon"]["socket_path"]]
    return argv


def absolute_config_file(args: argparse.Namespace) -> str | None:
    # Absolute, so the daemon (and a later restart, from anywhere) reads the same file.
    return str(Path(args.config).expanduser().absolute()) if args.config else None


def print_how_to_talk(socket_path: str) -> None:
    chat = PROJECT_ROOT / "interfaces" / "chat.py"
    chat_shown = "interfaces/chat.py" if Path.cwd() == PROJECT_ROOT else str(chat)
    python = python_command()
    # Clients find the socket the way the protocol says (KSI_SOCKET_PATH, KSI_VAR_DIR, the
    # project's var/);
    # only when --config/--var-dir/--socket moved it must they be told where it is.
    env_prefix = "" if os.path.realpath(socket_path) == socket_clients_would_find() else \
        f"KSI_SOCKET_PATH={socket_path} "
    # The chat script arrives with its own issue: only advertise what is there.
    chat_line = f"\n  chat:          {env_prefix}{python} {chat_shown}" if chat.exists() else ""
    print(f"""
Talk to it:
  raw protocol:  echo '{{"event":"system:health"}}' | nc -N -U {socket_path}{chat_line}
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
