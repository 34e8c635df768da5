"""The small core: a line in, exactly one reply out.

    protocol.py   the wire contract: envelopes, closed error codes, the one codec (orjson)
    router.py     the handler index, dispatch, subscriptions, the history ring
    context.py    what a handler sees of its request
    event_stats.py  per-event counts and latencies

Plugins never import from here: their API is `ksi_daemon.plugin_base`, `plugin_types`,
`event_system`, `hookspecs` and `protocol` (the error codes and `KSIError`).
"""
