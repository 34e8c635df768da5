"""Which sockets the daemon listens on, and what each one lets its clients send.

Always the main socket (`daemon.socket_path`, by default `var/run/daemon.sock`), which every
tool finds. With `transports.unix.socket_dir` (the deployment guide's setting), also
`events.sock` there, and `control.sock` with `compatibility_mode`. `transports.unix.sockets`
adds sockets or narrows one: `{"monitor.sock": {"allow": ["system:*", "state:get"]}}`, a name
being relative to `socket_dir` (else to the main socket's directory).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ...core.grants import AllowList

MAX_SOCKET_PATH = 107  # sun_path is 108 bytes on Linux, including the terminating NUL
EVENTS_SOCKET, CONTROL_SOCKET = "events.sock", "control.sock"


@dataclass(frozen=True)
class Listener:
    path: Path
    allow: AllowList | None  # None: every event
    legacy_commands: bool = False  # also the legacy {"command": ...} protocol (control.sock)


def listeners_of(config: dict) -> list[Listener]:
    """The main socket first, then the others in the order configured. Raises ValueError
    naming the setting when a path cannot be used."""
    unix = config["transports"]["unix"]
    main = Path(config["daemon"]["socket_path"])
    base = Path(unix["socket_dir"]).expanduser() if unix["socket_dir"] else main.parent
    wanted: dict[str, dict] = {}
    if unix["socket_dir"]:
        wanted[EVENTS_SOCKET] = {}
        if unix["compatibility_mode"]:
            wanted[CONTROL_SOCKET] = {}
    for name, settings in (unix.get("sockets") or {}).items():
        wanted[name] = {**wanted.get(name, {}), **settings}
    found = [Listener(main, None)]
    for name, settings in wanted.items():
        path = (base / Path(name).expanduser()).absolute()
        if len(str(path).encode()) > MAX_SOCKET_PATH:
            raise ValueError(f"transports.unix.sockets: {path} is longer than the "
                             f"{MAX_SOCKET_PATH} bytes a Unix socket path may have")
        if any(path == known.path for known in found):
            raise ValueError(f"transports.unix.sockets: {path} is listed twice (the main "
                             "socket is daemon.socket_path)")
        allow = settings.get("allow")
        found.append(Listener(path, None if allow is None else
                              AllowList(f"the socket {path}", tuple(allow)),
                              legacy_commands=name == CONTROL_SOCKET
                              and unix["compatibility_mode"]))
    return found
