"""The client's errors: one base class carrying the daemon's error code, and a few subclasses.

Every error reply of the daemon becomes a `KSIError` whose `.code` is the reply's code
(PROTOCOL.md §2), so programs branch on `.code` or catch a subclass, whichever reads better:

    try:
        await client.emit("state:set", {"key": "k", "value": 1, "if_version": 3})
    except KSIConflictError:
        ...                                  # same as: except KSIError as e: if e.code == "conflict"

Codes without a subclass of their own (`invalid_json`, `invalid_request`, `payload_too_large`,
`handler_error`, `forbidden`, `rate_limited`) come back as plain `KSIError` with that code.
Two errors start on the client's side: `KSIConnectionError` (code "connection_error": no daemon,
or the connection dropped) and `KSITimeoutError` (code "timeout", also used when the daemon
itself answered `timeout`).
"""
from __future__ import annotations

from typing import Any

CONNECTION_ERROR = "connection_error"  # client-side only: never on the wire


class KSIError(Exception):
    """An error with a machine-readable `code`, a `message` for people and optional `details`."""

    def __init__(self, code: str, message: str, details: Any = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code!r}, message={self.message!r})"

    def __reduce__(self):
        # Subclasses take fewer arguments than the base; rebuild from the fields instead.
        return _rebuild_error, (type(self), self.code, self.message, self.details)


def _rebuild_error(cls: type[KSIError], code: str, message: str, details: Any) -> KSIError:
    error = cls.__new__(cls)
    KSIError.__init__(error, code, message, details)
    return error


class _ErrorWithFixedCode(KSIError):
    """Base of the subclasses: the class decides the code, so callers pass only the message."""
    fixed_code = ""

    def __init__(self, message: str, details: Any = None):
        super().__init__(self.fixed_code, message, details)


class KSIConnectionError(_ErrorWithFixedCode):
    """No daemon listens at the socket, or the connection to it was lost or closed."""
    fixed_code = CONNECTION_ERROR


class KSITimeoutError(_ErrorWithFixedCode):
    """No reply in time: the client's own deadline passed, or the daemon answered `timeout`."""
    fixed_code = "timeout"


class KSIValidationError(_ErrorWithFixedCode):
    """`data` does not match the event's schema; `details` lists the failing fields."""
    fixed_code = "validation_error"


class KSINotFoundError(_ErrorWithFixedCode):
    """The thing named (agent, session, request, plugin, event) does not exist."""
    fixed_code = "not_found"


class KSIUnknownEventError(_ErrorWithFixedCode):
    """No handler for the event; `details["suggestions"]` lists close event names."""
    fixed_code = "unknown_event"


class KSIConflictError(_ErrorWithFixedCode):
    """A precondition failed (an `if_version` mismatch, an id already taken)."""
    fixed_code = "conflict"


class KSIUnavailableError(_ErrorWithFixedCode):
    """The daemon is shutting down, or the plugin behind the event failed to load."""
    fixed_code = "unavailable"


class KSIStorageError(_ErrorWithFixedCode):
    """The plugin's database failed under the request (a full disk, an I/O error, a lock):
    nothing of it was stored. `retry_after_s` says when trying again may succeed (None: not by
    waiting)."""
    fixed_code = "storage_error"

    @property
    def retry_after_s(self) -> float | None:
        details = self.details if isinstance(self.details, dict) else {}
        return details.get("retry_after_s")


UnknownEventError = KSIUnknownEventError  # the name the issue text uses

ERROR_CLASSES: dict[str, type[_ErrorWithFixedCode]] = {
    cls.fixed_code: cls for cls in (KSIConnectionError, KSITimeoutError, KSIValidationError,
                                    KSINotFoundError, KSIUnknownEventError, KSIConflictError,
                                    KSIUnavailableError, KSIStorageError)}


def error_from_reply(error: Any) -> KSIError:
    """The exception for the `error` object of an error reply."""
    if not isinstance(error, dict):
        return KSIError("handler_error", f"the daemon sent an unreadable error: {error!r}")
    code = str(error.get("code") or "handler_error")
    message = str(error.get("message") or code)
    details = error.get("details")
    cls = ERROR_CLASSES.get(code)
    return cls(message, details) if cls is not None else KSIError(code, message, details)
