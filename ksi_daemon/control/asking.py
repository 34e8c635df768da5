"""One request to the daemon over its socket, with the two ways it can go wrong told apart."""
from __future__ import annotations

import os

from ..launcher import ask

QUERY_TIMEOUT_S = 5.0


class DaemonUnreachable(Exception):
    """Nothing answers on the socket; the message says why, for people."""


class DaemonRefused(Exception):
    """The daemon answered with an error reply."""


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


def health_or_none(socket_path: str, timeout: float = QUERY_TIMEOUT_S) -> dict | None:
    try:
        return query(socket_path, "system:health", timeout=timeout)
    except (DaemonUnreachable, DaemonRefused):
        return None
