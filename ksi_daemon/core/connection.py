"""The connection contract: what the core asks of a transport's connection, and nothing more.

The router, the reply path, `Context` and the built-in plugins use a connection only through
these names, so a second transport (MCP, an extra socket, a cluster bridge) or the in-memory
connection of the tests (`memory_connection.py`) plugs in by implementing them.
"""
from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from .grants import Grant


@runtime_checkable
class Connection(Protocol):
    """One client's ordered stream of request lines in, replies and pushes out.

    id              a name for logs and history: `unix:<n>:pid<peer pid>`, `memory:<n>`
    peer_pid, peer_uid  who is at the other end, as the transport learned it (None: unknown)
    closed          True once nothing more can be written; the router skips closed connections
    pushes_dropped  how many pushes this connection refused while its client was not reading
    held            the pushes waiting for the reply of a request of this connection, by its
                    correlation id (`held_pushes.py`): an empty dict to start with; the core
                    fills and empties it, `push` only tests it
    grant           what its client may send (`grants.Grant`), or None: everything; the router
                    answers a request the grant refuses with `forbidden`

    A transport registers a new connection with `router.connection_opened(conn)` and reports
    its end with `router.connection_closed(conn)`; the router keeps the registry.
    """

    id: str
    peer_pid: int | None
    peer_uid: int | None
    closed: bool
    pushes_dropped: int
    held: dict[str, list[bytes] | None]
    grant: Grant | None

    def send(self, line: bytes) -> None:
        """Write a reply line (newline included). Never dropped: a transport whose client does
        not read stops reading that client's requests instead."""

    def push(self, line: bytes, correlation_id: str | None = None) -> bool:
        """Write a push line (newline included) carrying `correlation_id`; the transport may
        drop it for a slow client, counting it in `pushes_dropped`. True when it was written
        (or queued to be). A line whose id is in `held` goes to `held_pushes.hold_back`
        instead: its request's reply has not been sent yet."""

    def reply_owed(self) -> None:
        """A request of this connection will be answered later (a task, a future, an owed
        reply): the connection stays open for that reply even after its client's EOF."""

    def reply_done(self, _finished: Any = None) -> None:
        """An owed reply was written (also usable as a done-callback, hence the argument)."""

    def buffered_bytes(self) -> int:
        """Output written but not yet taken by the client (for metrics and push limits)."""
