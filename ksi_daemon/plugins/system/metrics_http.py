"""`daemon.metrics_http`: the Prometheus text format over HTTP at `/metrics`, loopback only.

prometheus_client's own server answers in a thread of its own (one per scrape), so a scrape
never waits for the event loop to be free to accept it. The figures themselves are read on
the loop (the router's counters change there): the scrape's thread hands the reading to the
loop and waits for it, at most SCRAPE_TIMEOUT_S.
"""
from __future__ import annotations

import asyncio
from typing import Callable

from prometheus_client import CollectorRegistry, start_http_server

from ...loopback import loopback_address as checked_loopback
from .prometheus import FiguresCollector

SCRAPE_TIMEOUT_S = 10.0


def loopback_address(address: str) -> tuple[str, int]:
    """`daemon.metrics_http` as (host, port); NotLoopback (a ValueError) for an address another
    machine could reach: the endpoint has no authentication."""
    return checked_loopback(address, "daemon.metrics_http", "the metrics endpoint")


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
