"""Client dialects: an event's request and reply reshaped for clients, its handler unchanged.

A plugin offers `EventAdapter`s through the `ksi_client_adapters` hook (the compat plugin does,
for the clients of upstream KSI); the plugin manager installs them once, after start-up, with
`Router.adapt_for_clients`. An adapted event's entry in the clients' index is a new `Handler`
that reshapes the data, runs the original handler (its schema, deadline and stats), and
reshapes the reply. Events nobody adapts, and every `ctx.emit` between plugins, are untouched:
with no adapter installed this module costs the daemon nothing.
"""
from __future__ import annotations

from typing import Any, Protocol

from .protocol import as_reply_data


class EventAdapter(Protocol):
    """How one event's requests and replies differ for some clients."""

    def request(self, data: dict, ctx) -> dict:
        """The client's `data` as the handler's schema takes it (return it unchanged when it
        is already so). `ctx` is the request's Context (its connection tells who asks)."""

    def reply(self, result: dict, data: dict, ctx) -> dict:
        """The handler's reply data as the client reads it; `data` is what the client sent."""


def adapted_handler(router, original, adapter: EventAdapter):
    """A Handler answering like `original`, through `adapter`."""
    from .router import Handler  # (here, not above: the router imports this module)

    async def answer_through_adapter(data: dict, ctx) -> Any:
        handed = adapter.request(data, ctx)
        result = await router._call_with_deadline(original, ctx.event, handed,
                                                  ctx.correlation_id, ctx.connection)
        return adapter.reply(as_reply_data(result), data, ctx)

    handler = Handler(original.event, answer_through_adapter, original.plugin,
                      summary=original.summary, returns=original.returns,
                      timeout=None,  # the original's own deadline applies, inside
                      streams=original.streams)
    handler.stats = original.stats  # counted as the event it is
    return handler
