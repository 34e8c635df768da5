"""The error codes and `KSIError` for plugins: raise `KSIError(CODE, message)` in a handler to
answer with that coded error (PROTOCOL.md §2). The codec itself lives in `ksi_daemon.core`."""
from .core.protocol import (CONFLICT, ERROR_CODES, FORBIDDEN, HANDLER_ERROR,  # noqa: F401
                            INVALID_JSON, INVALID_REQUEST, NOT_FOUND, PAYLOAD_TOO_LARGE,
                            RATE_LIMITED, STORAGE_ERROR, TIMEOUT, UNAVAILABLE, UNKNOWN_EVENT,
                            VALIDATION_ERROR, KSIError)
