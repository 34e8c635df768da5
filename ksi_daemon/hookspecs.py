"""Every hook a KSI plugin can implement. This file is the plugin API.

Implement a hook by defining a function (module plugins) or method (BasePlugin subclasses) with
the hook's name, marked with `ksi_daemon.plugin_base.hookimpl`. An implementation may accept any
subset of the arguments listed here, by name. Any hook may return an awaitable; the daemon awaits
it. The daemon calls each plugin's implementation on its own, in plugin order (dependencies, then
priority, then name; shutdown in reverse), so one plugin raising never stops the others: the
plugin is marked `failed` with the reason and the daemon carries on.

Events are mostly declared with `@event_handler` (see `ksi_daemon.event_system`); the hooks below
cover the lifecycle and the extension points around events. Hooks that belong to one plugin live
in that plugin's own hookspecs module, declared in its `PluginMetadata(hookspecs=[...])`: the
completion hooks are in `ksi_daemon/plugins/completion/hookspecs.py`.

`firstresult=True` below means: implementations are asked in plugin order until one returns
something other than None, and that answer is used (`Hook.call_first`). Every other hook calls
every implementation (`Hook.call_each`). pluggy's `tryfirst`/`trylast` are not honoured: the
order is the plugins' order, nothing else.
"""
from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("ksi")


@hookspec
def ksi_startup(config, context):
    """Prepare the plugin: open files, read its config. Called once, before any request.

    config: the whole daemon configuration (dict).
    context: this plugin's PluginContext (ksi_daemon/plugin_context.py): `name`, `config`
        (its own section of `plugins.<name>`), `data_dir` (created for it under
        `var/plugins/<name>`), `log`, `emit()`, `announce()`, `announce_all()`, `push()`,
        `shutdown_deadline`, `hook(name)`. The same object reaches every lifecycle hook.
    Raising marks the plugin failed; its events then answer `unavailable`.
    """


@hookspec
def ksi_ready(context):
    """Every plugin has started. Return None, a coroutine, or a list of coroutines.

    Returned coroutines are long-running services (a listener, a poller). The daemon runs each
    as a supervised task: one that raises is logged and marks its plugin failed; all are
    cancelled at shutdown. The Unix transport opens its socket here, after every plugin started.
    """


@hookspec
def ksi_stopping(context):
    """The daemon is shutting down and no longer takes new requests.

    Stop accepting new work (close listeners) but let in-flight requests finish: the daemon waits
    for them, up to its shutdown deadline, before calling `ksi_shutdown`.
    """


@hookspec
def ksi_shutdown(context):
    """Release everything: flush, close files and connections. Called in reverse plugin order."""


@hookspec(firstresult=True)
def ksi_handle_event(event_name, data, context):
    """Answer an event that no `@event_handler` claims (the classic pluggy style).

    Called only for names nobody indexed. Return the reply data (a dict) to answer it, or None to
    let the next plugin try; if every plugin returns None the reply is `unknown_event`.
    `context` is the request's Context (correlation_id, connection, emit, push).
    """


@hookspec
def ksi_pre_event(event_name, data, context):
    """Middleware before a handler runs. Return a dict to replace `data`, or None to keep it.

    Raise `ksi_daemon.protocol.KSIError` to refuse the request with that code. Costs nothing on
    the hot path when no plugin implements it (checked once at start).
    """


@hookspec
def ksi_post_event(event_name, data, result, context):
    """Middleware after a handler succeeded. Return a dict to replace `result`, or None to keep it.

    Costs nothing on the hot path when no plugin implements it (checked once at start).
    """


@hookspec
def ksi_request_refused(event_name, error, connection):
    """A client's request was refused for permissions (`forbidden`): its socket's or its uid's
    allow-list, or an event only plugins may send. `error` is the KSIError it was answered
    with, `connection` the core Connection it came on (peer_pid, peer_uid). Called on the event
    loop as the refusal is sent: record it and return (the state plugin's audit does).
    """


@hookspec
def ksi_client_adapters(context):
    """Client dialects: return {event name: EventAdapter} (ksi_daemon/core/adapters.py).

    Asked once, after every plugin started and before any socket opens. For each event, the
    requests clients send go through `adapter.request(data, ctx)` before the handler's schema
    sees them, and its reply through `adapter.reply(result, data, ctx)`; events plugins emit to
    each other are not adapted. Only events another plugin handles can be adapted (others are
    logged and skipped). The compat plugin uses it for the clients of upstream KSI. Costs
    nothing when no plugin implements it; an adapted event takes the async path.
    """


@hookspec
def ksi_queue_depths():
    """How much work the plugin holds waiting right now, by queue: `{"queued": 3}` (ints).

    Read when metrics are (`system:metrics`, a Prometheus scrape of `/metrics`), never per
    event, on the event loop: return `len()` of what exists, compute nothing. Shown per plugin
    as `queues` in `system:metrics` and as `ksi_plugin_queue_depth{plugin, queue}`.
    """


@hookspec
def ksi_health_report():
    """Sections to add to `system:health`: return {name: JSON-able dict}, at once (no I/O:
    report what is already known). Called on every health request, so only plugins with
    something a user must see there implement it (the cluster plugin: `cluster`). Costs nothing
    when no plugin implements it.
    """
