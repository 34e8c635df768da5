"""Python client of the KSI daemon: stdlib and orjson only, cheap to import.

    from ksi_client import AsyncClient, SyncClient, EventClient, KSIError

`EventClient` is the asyncio client (emit, subscribe, events); `AsyncClient` adds a helper per
everyday task (health, completions, agents, topics, state, conversations); `SyncClient` and
`SyncEventClient` are the same two for code without asyncio. Every error is a `KSIError` whose
`.code` is the daemon's error code (PROTOCOL.md §2) or "connection_error". docs/CLIENT.md shows
every helper with an example.
"""
from .async_client import AsyncClient
from .completion import CompletionCancelled, CompletionResponse
from .errors import (CONNECTION_ERROR, KSIConflictError, KSIConnectionError, KSIError,
                     KSINotFoundError, KSIStorageError, KSITimeoutError, KSIUnavailableError,
                     KSIUnknownEventError, KSIValidationError, UnknownEventError,
                     error_from_reply)
from .event_client import DEFAULT_TIMEOUT_S, Event, EventClient, EventStream, Subscription
from .socket_path import find_socket_path
from .sync_client import SyncClient, SyncEventClient, SyncEventStream

__all__ = [
    "EventClient", "SyncEventClient", "Event", "EventStream", "SyncEventStream", "Subscription",
    "KSIError", "KSIConnectionError", "KSITimeoutError", "KSIValidationError",
    "KSINotFoundError", "KSIUnknownEventError", "UnknownEventError", "KSIConflictError",
    "KSIUnavailableError", "KSIStorageError", "CONNECTION_ERROR", "error_from_reply", "find_socket_path",
    "DEFAULT_TIMEOUT_S", "AsyncClient", "SyncClient", "CompletionResponse",
    "CompletionCancelled",
]
