"""What one connection may send, and how fast: decided once, when it is accepted.

A transport gives each connection a `Grant`, or None: everything at any rate (the daemon's own
user on the main socket, as by default), which costs the router one attribute test per request.
A grant holds the allow-lists that apply (the socket's, the peer uid's) and the token buckets
(the connection's own, its uid's, shared with the uid's other connections, and its uid's
completion budget). `GrantBook` builds grants from the config (docs/OPERATIONS.md,
"Permissions" and "Rate limits").
"""
from __future__ import annotations

import os
import time

from ..event_system import compile_pattern
from .protocol import FORBIDDEN, RATE_LIMITED, KSIError

COMPLETIONS = frozenset({"completion:request", "completion:async"})


class Bucket:
    """A token bucket: `rate` tokens a second, at most `burst` saved up."""
    __slots__ = ("rate", "burst", "tokens", "stamp", "what")

    def __init__(self, rate: float, burst: int, what: str):
        self.rate, self.burst, self.what = rate, burst, what
        self.tokens, self.stamp = float(burst), time.perf_counter()

    def take(self, now: float) -> float:
        """0.0 if a token was taken, else the seconds until one will be there."""
        tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if tokens >= 1.0:
            self.tokens = tokens - 1.0
            return 0.0
        self.tokens = tokens
        return (1.0 - tokens) / self.rate


class AllowList:
    __slots__ = ("rule", "patterns", "_matchers")

    def __init__(self, rule: str, patterns: tuple[str, ...]):
        self.rule, self.patterns = rule, patterns
        self._matchers = [compile_pattern(pattern) for pattern in patterns]

    def allows(self, event: str) -> bool:
        return any(matches(event) for matches in self._matchers)


class Grant:
    def __init__(self, allow_lists: tuple[AllowList, ...] = (),
                 buckets: tuple[Bucket, ...] = (), completion_bucket: Bucket | None = None):
        self.allow_lists, self.buckets = allow_lists, buckets
        self.completion_bucket = completion_bucket

    def refusal(self, event: str, now: float) -> KSIError | None:
        """None if `event` may be sent now, else the error to answer it with."""
        # The buckets first: a flood of refused requests is slowed like any other, and each
        # `forbidden` it gets is recorded (the audit), so it must not come at any rate.
        for bucket in self.buckets:
            if wait := bucket.take(now):
                return _limited(bucket, wait)
        for allowed in self.allow_lists:
            if not allowed.allows(event):
                return KSIError(FORBIDDEN, f"{event} is not allowed here: {allowed.rule} allows "
                                f"only {', '.join(allowed.patterns) or 'nothing'}",
                                {"rule": allowed.rule, "allowed": list(allowed.patterns)})
        if self.completion_bucket is not None and event in COMPLETIONS:
            if wait := self.completion_bucket.take(now):
                return _limited(self.completion_bucket, wait)
        return None


def _limited(bucket: Bucket, wait: float) -> KSIError:
    return KSIError(RATE_LIMITED, f"rate limit: {bucket.what} may send {bucket.rate:g} a second "
                    f"(bursts of {bucket.burst}); try again in {wait:.3f} s",
                    {"retry_after_s": round(wait, 3), "limit": bucket.what,
                     "per_s": bucket.rate, "burst": bucket.burst})


class GrantBook:
    """Grants for new connections, from `permissions` in the config; one per connection, with
    the uid's buckets shared among that uid's connections."""

    def __init__(self, permissions: dict, own_uid: int | None = None):
        self.own_uid = os.getuid() if own_uid is None else own_uid
        self.uid_rules = {int(uid): rule for uid, rule in permissions["uids"].items()}
        self.limits = permissions["rate_limits"]
        self._uid_buckets: dict[int, tuple[Bucket, Bucket]] = {}

    def grant_for(self, uid: int | None, socket_allow: AllowList | None) -> Grant | None:
        allow_lists = [socket_allow] if socket_allow is not None else []
        rule = self.uid_rules.get(uid) if uid is not None else None
        if rule is not None and rule.get("allow") is not None:
            allow_lists.append(AllowList(f"the rule for uid {uid} (permissions.uids)",
                                         tuple(rule["allow"])))
        limited = self.limits["enabled"] and (uid != self.own_uid or self.limits["own_uid"])
        if not limited:
            return Grant(tuple(allow_lists)) if allow_lists else None
        per_connection = self.limits["connection"]
        own = Bucket(per_connection["per_s"], per_connection["burst"], "this connection")
        uid_bucket, completions = self._buckets_of(uid)
        return Grant(tuple(allow_lists), (own, uid_bucket), completions)

    def _buckets_of(self, uid: int | None) -> tuple[Bucket, Bucket]:
        buckets = self._uid_buckets.get(uid)
        if buckets is None:
            per_uid, completions = self.limits["uid"], self.limits["completions"]
            buckets = self._uid_buckets[uid] = (
                Bucket(per_uid["per_s"], per_uid["burst"], f"uid {uid}"),
                Bucket(completions["per_s"], completions["burst"], f"uid {uid}'s completions"))
        return buckets
