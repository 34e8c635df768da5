"""The `cluster` settings as the keyword arguments of `nats.connect`.

Bounded everywhere: a connect attempt gives up after `connect_timeout_s`; a server that stops
answering is noticed by pings within about three `PING_INTERVAL_S` (nats-py's default, two
minutes, would leave a partitioned node believing itself connected for minutes); after a loss
the client reconnects forever, every `RECONNECT_WAIT_S`.
"""
from __future__ import annotations

import ssl

PING_INTERVAL_S = 2
MAX_OUTSTANDING_PINGS = 2
RECONNECT_WAIT_S = 0.5


def connect_options(settings: dict) -> dict:
    options = {
        "servers": [url.strip() for url in settings["nats_url"].split(",") if url.strip()],
        "name": f"ksi-{settings['node_id']}",
        "connect_timeout": settings["connect_timeout_s"],
        "allow_reconnect": True,
        "max_reconnect_attempts": -1,
        "reconnect_time_wait": RECONNECT_WAIT_S,
        "ping_interval": PING_INTERVAL_S,
        "max_outstanding_pings": MAX_OUTSTANDING_PINGS,
    }
    if settings["user"]:
        options["user"], options["password"] = settings["user"], settings["password"]
    if settings["token"]:
        options["token"] = settings["token"]
    if settings["creds_file"]:
        options["user_credentials"] = settings["creds_file"]
    tls = tls_context(settings)
    if tls is not None:
        options["tls"] = tls
    return options


def tls_context(settings: dict) -> ssl.SSLContext | None:
    """A client TLS context when a CA or a client certificate is configured (a `tls://` URL
    without either uses the system's CAs, which nats-py sets up itself)."""
    if not (settings["tls_ca"] or settings["tls_cert"]):
        return None
    context = ssl.create_default_context(cafile=settings["tls_ca"] or None)
    if settings["tls_cert"]:
        context.load_cert_chain(settings["tls_cert"], settings["tls_key"])
    return context
