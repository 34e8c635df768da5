"""Every hook a KSI plugin can implement. This file is the plugin API.

Implement a hook by defining a function (module plugins) or method (BasePlugin subclasses) with
the hook's name, marked with `ksi_daemon.plugin_base.hookimpl`. An implementation may accept any
subset of the arguments listed here, by name. Any hook may return an awaitable; the daemon awaits
it. The daemon calls each plugin's implementation on its own, in plugin order (dependencies, then
priority, then name; shutdown in reverse), so one plugin raising never stops the others: the
plugin is marked `failed` with the reason and the daemon carries on.

Events are mostly declared with `@event_handler` (see `ksi_daemon.event_system`); the hooks below
cover the lifecycle and the extension points around events.
"""
from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("ksi")


@hookspec
def ksi_startup(config, context):
    """Prepare the plugin: open files, read its config. Called once, before any request.

    config: the whole daemon configuration (dict).
    context: this plugin's PluginContext: `name`, `config` (its own section of
        `plugins.<name>`), `data_dir` (created for it under `var/plugins/<name>`), `emit()`,
        `log`.
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
def ksi_completion_pre_call(context):
    """A completion is about to call its model. Change the call by changing `context` in place.

    context: a `PreCallContext` (ksi_daemon.plugins.completion.models) with `request_id`,
        `session_id`, `agent_id`, `model` (the litellm model name, alias already resolved),
        `messages` (OpenAI-style dicts: the session's earlier turns, then this turn), `params`
        (extra litellm arguments such as temperature) and `metadata` (free for plugins).
    Assign `context.model` or edit `context.messages` / `context.params`; the return value is
    ignored. Raise `KSIError` to refuse the completion with that code (it ends with
    `completion:error`); any other exception is logged and this implementation is skipped.
    May be async. See docs/COMPLETION.md for runnable examples.
    """


@hookspec
def ksi_completion_post_response(context):
    """A completion has its answer, before it is stored and sent. Observe it or annotate it.

    context: a `PostResponseContext` with `request_id`, `session_id`, `agent_id`, `model`,
        `messages` (what was sent), `text`, `usage`, `cost_usd`, `attempts` and `annotations`,
        a dict whose entries are returned to the client in the result's `annotations`.
    Exceptions other than `KSIError` are logged and ignored. May be async.
    """
