"""Cluster mode: the context of a request another node forwarded to this one (cluster_seam.py).

It has the asking request's correlation id, but no connection on this node to push to. When
the asking node takes pushes back for the request, what the handler pushes to its caller goes
there (`push`), and that node raises it as a single daemon would: to the asking client and to
every node's subscribers. Otherwise the push is announced here instead, for subscribers only.
"""
from __future__ import annotations

from typing import Callable


class Forwarded:
    __slots__ = ("correlation_id", "_push")

    def __init__(self, correlation_id: str | None,
                 push: Callable[[str, object], None] | None = None):
        self.correlation_id = correlation_id
        self._push = push

    @property
    def reaches_its_caller(self) -> bool:
        return self._push is not None

    def push(self, event: str, data) -> None:
        if self._push is not None:
            self._push(event, data)


def caller_of(ctx):
    """The context a message's reply is pushed to later: the request's own, unless it was
    forwarded by a node that takes no pushes back (then the reply is only announced)."""
    return None if isinstance(ctx, Forwarded) and not ctx.reaches_its_caller else ctx
