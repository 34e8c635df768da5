"""One request to NATS, bounded: an answer, a JetStream refusal, or `unavailable`. Never a hang."""
from __future__ import annotations

import asyncio

from ...protocol import UNAVAILABLE, KSIError


async def ask(request, timeout_s: float, what: str):
    """Await `request` for at most `timeout_s`; JetStream's own refusals (APIError) pass
    through for the caller to judge, anything else that is not an answer is `unavailable`."""
    import nats.errors
    from nats.js.errors import APIError
    try:
        return await asyncio.wait_for(request, timeout_s)
    except APIError:
        raise
    except (nats.errors.Error, asyncio.TimeoutError, OSError) as exc:
        raise KSIError(UNAVAILABLE, f"{what} did not answer ({type(exc).__name__}: {exc})") \
            from None


def unreachable(what: str, node) -> KSIError:
    return KSIError(UNAVAILABLE, f"{what} is unreachable (NATS at {node.nats_url}: "
                    f"{node.last_error or 'reconnecting'})")
