"""Cluster mode: the context of a request another node forwarded to this one (cluster_seam.py).

It has the asking request's correlation id, but no connection on this node to push to: what the
handler would push to its caller is announced instead, and the reply data goes back to the
asking node, which answers its client."""
from __future__ import annotations


class Forwarded:
    __slots__ = ("correlation_id",)

    def __init__(self, correlation_id: str | None):
        self.correlation_id = correlation_id

    def push(self, event: str, data) -> None:
        pass  # the asking node has the connection; the reply goes back to it
