"""The small core: a line in, exactly one reply out.

    protocol.py     the wire contract: envelopes, closed error codes, the one codec (orjson)
    router.py       the handler index, dispatch, emit/push, subscriptions, drain
    reply.py        the one reply path: encode (with a coded fallback), send, record, release
    context.py      what a handler sees of its request
    connection.py   the Connection protocol every transport implements
    memory_connection.py  an in-memory Connection, to drive a Router in-process (tests)
    hooks.py        the one hook runner: implementations in plugin order, call_each/call_first
    history.py      the history ring's bound in bytes (truncated copies of big data)
    event_stats.py  per-event counts and latencies

Plugins never import from here: their API is `ksi_daemon.plugin_base`, `plugin_types`,
`event_system`, `hookspecs`, `plugin_context` and `protocol` (the error codes and `KSIError`).
(The built-in transport and the message plugin's fan-out use the codec of `protocol.py`.)
"""
