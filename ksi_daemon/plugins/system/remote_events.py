"""This node's end of the event bridge: the other nodes, seen by the router as one subscriber.

It subscribes to the router with the patterns other nodes' connections subscribed to, so the
router's own fan-out hands it exactly the events somebody elsewhere wants (already encoded as
a push line, which the bridge forwards as is); events of other nodes come back through
`deliver` and are fanned out here with this object as their origin, so they never go out
again. A `LocalEvents` of bridge_seam.py.
"""
from __future__ import annotations


class RemoteEvents:
    id = "remote-nodes"
    closed = False

    def __init__(self, router, bridge):
        self.router, self.bridge = router, bridge

    # ---- the router's view: a subscriber ---------------------------------------------------

    def push(self, line: bytes, correlation_id=None) -> bool:
        self.bridge.export(line)
        return True

    # ---- the bridge's view: LocalEvents ------------------------------------------------------

    def local_patterns(self) -> set[str]:
        return {pattern for conn, patterns in self.router.subscriptions.items()
                if conn is not self for pattern in patterns}

    def want_remote(self, patterns: set[str]) -> None:
        self.router.unsubscribe(self, None)
        if patterns:
            self.router.subscribe(self, sorted(patterns))

    def deliver(self, event: str, data, correlation_id) -> None:
        self.router.fan_out(event, data, correlation_id, self)
