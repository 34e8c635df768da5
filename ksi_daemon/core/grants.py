"""What one connection may send: decided once, when it is accepted, and asked per request.

A transport gives each connection a `Grant` (or None: everything, the usual case, which costs
the router one attribute test per request). A socket's allow-list is a grant today; rules per
uid and per agent add to the same object, so the router has one question to ask.
"""
from __future__ import annotations

from ..event_system import compile_pattern
from .protocol import FORBIDDEN, KSIError


class Grant:
    """Events matching any of `patterns` may be sent; `rule` names where the list comes from
    (it is said in every refusal, so a client can tell which setting refused it)."""

    def __init__(self, patterns: tuple[str, ...], rule: str):
        self.patterns, self.rule = patterns, rule
        self._matchers = [compile_pattern(pattern) for pattern in patterns]

    def refusal(self, event: str) -> KSIError | None:
        """None if `event` may be sent, else the `forbidden` error to answer with."""
        for matches in self._matchers:
            if matches(event):
                return None
        return KSIError(FORBIDDEN, f"{event} is not allowed here: {self.rule} allows only "
                                   f"{', '.join(self.patterns) or 'nothing'}",
                        {"rule": self.rule, "allowed": list(self.patterns)})
