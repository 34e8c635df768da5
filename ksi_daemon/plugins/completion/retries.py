"""Which upstream failures are worth another attempt, how long to wait, and what code to report.

Works on litellm's exceptions by their attributes (status_code, response headers) so that this
module never imports litellm itself.
"""
from __future__ import annotations

import email.utils
import random
import time

from ...protocol import (FORBIDDEN, HANDLER_ERROR, NOT_FOUND, RATE_LIMITED, TIMEOUT,
                         UNAVAILABLE, VALIDATION_ERROR)

RETRYABLE_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504, 529})
_TRANSIENT_NAMES = ("APIConnectionError", "ServiceUnavailableError", "InternalServerError",
                    "RateLimitError", "Timeout", "APITimeoutError")


class RetryPolicy:
    """Exponential backoff with jitter; a server's Retry-After wins when it gives one."""

    def __init__(self, max_attempts: int = 4, base_delay_s: float = 0.5,
                 max_delay_s: float = 30.0):
        self.max_attempts = max(1, max_attempts)
        self.base_delay_s, self.max_delay_s = base_delay_s, max_delay_s

    def delay_before(self, attempt: int, error: BaseException) -> float:
        """Seconds to wait before `attempt` (2, 3, ...) after `error` ended the previous one."""
        asked = retry_after_s(error)
        if asked is not None:
            return min(asked, self.max_delay_s)
        backoff = self.base_delay_s * 2 ** (attempt - 2)
        # Full jitter on the upper half keeps many clients from retrying in lockstep.
        return min(self.max_delay_s, backoff * (0.5 + random.random() / 2))


def status_of(error: BaseException) -> int | None:
    status = getattr(error, "status_code", None)
    if isinstance(status, int):
        return status
    response = getattr(error, "response", None)
    status = getattr(response, "status_code", None)
    return status if isinstance(status, int) else None


def is_transient(error: BaseException) -> bool:
    status = status_of(error)
    if status is not None:
        return status in RETRYABLE_STATUS
    return type(error).__name__ in _TRANSIENT_NAMES


def retry_after_s(error: BaseException) -> float | None:
    """The wait the server asked for, from `retry-after-ms` or `Retry-After` (seconds or date)."""
    headers = _headers_of(error)
    if not headers:
        return None
    millis = _header(headers, "retry-after-ms")
    if millis is not None:
        try:
            return max(0.0, float(millis) / 1000)
        except ValueError:
            pass
    value = _header(headers, "retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def reason_of(error: BaseException) -> str:
    status = status_of(error)
    name = type(error).__name__
    return f"{name} (HTTP {status})" if status else name


def error_code_of(error: BaseException) -> str:
    """The protocol error code a failed completion ends with."""
    if isinstance(error, TimeoutError) or type(error).__name__ in ("Timeout", "APITimeoutError"):
        return TIMEOUT
    status = status_of(error)
    if status == 429:
        return RATE_LIMITED
    if status in (401, 403):
        return FORBIDDEN
    if status == 404:
        return NOT_FOUND
    if status in (400, 422):
        return VALIDATION_ERROR
    if status in (408, 504):
        return TIMEOUT
    if (status is not None and status >= 500) or type(error).__name__ in _TRANSIENT_NAMES:
        return UNAVAILABLE
    return HANDLER_ERROR


def _headers_of(error: BaseException):
    for holder in (getattr(error, "response", None), error):
        headers = getattr(holder, "headers", None)
        if headers:
            return headers
    return getattr(error, "litellm_response_headers", None)


def _header(headers, name: str):
    try:
        value = headers.get(name)
        if value is None:
            value = headers.get(name.title())
        return value
    except AttributeError:
        return None
