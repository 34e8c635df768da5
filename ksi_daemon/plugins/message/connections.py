"""Which client connections subscribed to which topics, and handing them a published line.

Delivery hands the encoded push to each connection's `push()` (the core's Connection contract),
under the transport's slow-consumer policy (PROTOCOL.md §3): past its output limit a connection
drops the line, counts it, and is disconnected if it stays slow for the grace period. So a
subscriber that never reads costs the publisher nothing more than the check, and never stalls
the others.

Plugins get no call when a connection closes, so closed connections are dropped lazily: when a
publish finds one, on every subscribe, and by the plugin's periodic sweep. Memory stays bounded by
the live connections' subscriptions.
"""
from __future__ import annotations

from typing import Callable

from ...protocol import VALIDATION_ERROR, KSIError
from .topics import compile_topic_pattern

MAX_MATCH_CACHE = 4096


class ConnectionSubscriptions:
    def __init__(self, max_patterns: int):
        self.max_patterns = max_patterns
        self._patterns: dict[object, dict[str, Callable[[str], bool]]] = {}
        self._match_cache: dict[str, tuple] = {}

    def subscribe(self, conn, patterns: list[str]) -> list[str]:
        self.forget_closed()
        active = self._patterns.get(conn, {})
        new = [p for p in dict.fromkeys(patterns) if p not in active]
        if len(active) + len(new) > self.max_patterns:
            raise KSIError(VALIDATION_ERROR, f"a connection may hold at most "
                           f"{self.max_patterns} subscriptions ({len(active)} active)")
        for pattern in new:
            active[pattern] = compile_topic_pattern(pattern)
        if active:
            self._patterns[conn] = active
        self._match_cache.clear()
        return list(active)

    def unsubscribe(self, conn, patterns: list[str] | None) -> list[str]:
        """Leave `patterns` (None: all); return the patterns actually left."""
        active = self._patterns.get(conn, {})
        left = list(active) if patterns is None else [p for p in patterns if p in active]
        for pattern in left:
            del active[pattern]
        if not active:
            self._patterns.pop(conn, None)
        self._match_cache.clear()
        return left

    def deliver(self, topic: str, line: bytes, correlation_id: str | None) -> int:
        """Push `line` (carrying `correlation_id`) to every subscriber of `topic`; return how
        many took it (not dropped, or held until the publish's reply)."""
        subscribers = self._match_cache.get(topic)
        if subscribers is None:
            subscribers = self._subscribers_of(topic)
        delivered = 0
        closed = None
        for conn in subscribers:
            if conn.closed:
                closed = (closed or []) + [conn]
            elif conn.push(line, correlation_id):  # False: dropped by the transport's slow-consumer policy
                delivered += 1
        if closed:
            for conn in closed:
                self._patterns.pop(conn, None)
            self._match_cache.clear()
        return delivered

    def forget_closed(self) -> int:
        closed = [conn for conn in self._patterns if conn.closed]
        for conn in closed:
            del self._patterns[conn]
        if closed:
            self._match_cache.clear()
        return len(closed)

    def _subscribers_of(self, topic: str) -> tuple:
        if len(self._match_cache) >= MAX_MATCH_CACHE:
            self._match_cache.clear()
        subscribers = self._match_cache[topic] = tuple(
            conn for conn, patterns in self._patterns.items()
            if any(match(topic) for match in patterns.values()))
        return subscribers

    def __len__(self) -> int:
        return len(self._patterns)

