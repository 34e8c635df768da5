"""The one rule for the daemon's HTTP endpoints (MCP over HTTP, `/metrics`): loopback only.

Neither endpoint asks who is calling as the socket does (SO_PEERCRED), so neither may listen
where another machine could reach it.
"""
from __future__ import annotations

import ipaddress


class NotLoopback(ValueError):
    """An address an endpoint refuses to listen on."""


def loopback_address(address: str, key: str, endpoint: str) -> tuple[str, int]:
    """`127.0.0.1:8765`, `[::1]:8765` or `localhost:8765` as (host, port) to bind.

    key: the config key the address came from; endpoint: what listens there. Both name the
    refusal (a NotLoopback) of anything else.
    """
    host, separator, port_text = address.rpartition(":")
    if not separator or not port_text.isdigit() or int(port_text) > 65535:
        raise NotLoopback(f"{key} is {address!r}: expected \"127.0.0.1:PORT\"")
    host = host.removeprefix("[").removesuffix("]")
    if host == "localhost":
        host = "127.0.0.1"  # what `localhost` resolves to is the resolver's, not ours, to say
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise NotLoopback(f"{key} is {address!r}: {endpoint} listens on loopback only "
                          "(127.0.0.1, ::1 or localhost), never on an address other machines "
                          "can reach")
    return host, int(port_text)
