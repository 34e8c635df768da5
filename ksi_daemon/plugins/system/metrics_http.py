"""`daemon.metrics_http`: the Prometheus text format over HTTP at `/metrics`, loopback only.

prometheus_client's own server answers in a thread of its own (one per scrape), so a scrape
never waits for the event loop to be free to accept it. The figures themselves are read on
the loop (the router's counters change there): the scrape's thread hands the reading to the
loop and waits for it, at most SCRAPE_TIMEOUT_S.
"""
from __future__ import annotations

import asyncio
import ipaddress
from typing import Callable

from prometheus_client import CollectorRegistry, start_http_server

from .prometheus import FiguresCollector

SCRAPE_TIMEOUT_S = 10.0


def loopback_address(text: str) -> tuple[str, int]:
    """"127.0.0.1:9464", "localhost:9464" or "[::1]:9464" as (host, port); ValueError saying
    why for anything else (another interface would publish the figures to the network)."""
    host, colon, port = text.rpartition(":")
    host = host.strip("[]")
    if not colon or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{text!r} is not HOST:PORT")
    if host != "localhost":
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise ValueError(f"{host} is not a loopback address: the metrics endpoint has no "
                             "authentication, so it listens on 127.0.0.1, ::1 or localhost "
                             "only (put a proxy in front to publish it)")
    return host, int(port)


class MetricsEndpoint:
    def __init__(self, host: str, port: int, read_figures: Callable[[], dict]):
        self.host, self.port, self.read_figures = host, port, read_figures
        self.server = None

    def start(self) -> str:
        """Listen (on the loop that will read the figures); the address, port resolved."""
        loop = asyncio.get_running_loop()

        async def read_on_the_loop() -> dict:
            return self.read_figures()

        def figures_from_the_loop() -> dict:
            return asyncio.run_coroutine_threadsafe(read_on_the_loop(), loop).result(
                SCRAPE_TIMEOUT_S)
        registry = CollectorRegistry()
        registry.register(FiguresCollector(figures_from_the_loop))
        self.server, _thread = start_http_server(self.port, self.host, registry)
        self.port = self.server.server_port
        return f"{self.host}:{self.port}" if ":" not in self.host else f"[{self.host}]:{self.port}"

    async def stop(self) -> None:
        """Stop listening; a scrape in progress is cut off (its thread is a daemon thread)."""
        server, self.server = self.server, None
        if server is not None:
            # shutdown() waits for the serving thread's next poll (up to half a second)
            await asyncio.to_thread(server.shutdown)
            server.server_close()
