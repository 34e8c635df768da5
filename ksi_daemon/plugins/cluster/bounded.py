"""One request to NATS, bounded: an answer, a JetStream refusal, or `unavailable`.

Every store of the cluster plugin asks NATS through `ask`, so no request waits without a bound
and a lost connection reads the same everywhere (docs/CLUSTER.md, "Failure is visible").
"""
from __future__ import annotations

import asyncio

from ...protocol import UNAVAILABLE, KSIError


async def ask(request, timeout_s: float, what: str, nats_url: str):
    """Await `request` for at most `timeout_s`. JetStream's own refusals (APIError) go to the
    caller, which knows what they mean; anything else is `unavailable`, naming `what`."""
    import nats.errors
    from nats.js.errors import APIError
    try:
        return await asyncio.wait_for(request, timeout_s)
    except APIError:
        raise
    except (nats.errors.Error, asyncio.TimeoutError, OSError) as exc:
        raise KSIError(UNAVAILABLE, f"{what} did not answer ({type(exc).__name__}: {exc}); "
                       f"NATS at {nats_url}") from None


def unreachable(what: str, node) -> KSIError:
    return KSIError(UNAVAILABLE, f"{what} is unreachable (NATS at {node.nats_url}: "
                    f"{node.last_error or 'reconnecting'})")


async def let_go(stopping, timeout_s: float) -> None:
    """Await a watcher's `stop()` or a subscription's `unsubscribe()`, bounded, whatever it ends
    in: the connection it lived on may be gone, and it is being dropped anyway."""
    try:
        await asyncio.wait_for(stopping, timeout_s)
    except Exception:  # noqa: BLE001 - see above
        pass
