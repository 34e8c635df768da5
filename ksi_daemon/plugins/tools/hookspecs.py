"""The tools plugin's own hooks: other plugins implement them to add tools and to take part in
every tool call. Added to the daemon by the tools plugin's `PluginMetadata(hookspecs=[...])`.

They are seeds/004's promises under KSI's names: `TOOL_REGISTRY_BUILD` is
`ksi_tools_register`, `PRE_TOOL_EXECUTE` is `ksi_tool_pre_execute`, `POST_TOOL_EXECUTE` is
`ksi_tool_post_execute`. Each runs with `call_each` in plugin order (dependencies, priority,
name). See docs/TOOLS.md for runnable examples.
"""
from __future__ import annotations

from ...hookspecs import hookspec


@hookspec
def ksi_tools_register(registry):
    """The registry is being built (once, when every plugin has started). Add your tools.

    registry: a `PluginTools` (ksi_daemon.plugins.tools.registry) with one method,
        `add(name, function, *, description=None, input=None, idempotent=False,
        timeout_s=None, explicit_only=False)`. `function` takes the validated input (an
        instance of `input` when it is a pydantic model, a dict for a TypedDict or no input)
        and returns JSON; it may be sync (run in a thread) or async. A name the model cannot
        see (`^[A-Za-z0-9_-]{1,64}$` after ":" becomes "_") or one already taken is refused:
        logged, and that tool is skipped. An exception here is logged and skipped. May be async.
    """


@hookspec
def ksi_tool_pre_execute(context):
    """A tool is about to run. Change `context.arguments` in place, or refuse the call.

    context: a `PreExecuteContext` (ksi_daemon.plugins.tools.models) with `name`, `call_id`,
        `request_id`, `agent_id`, `source` and `arguments` (a dict, before validation).
    Raise `KSIError` to refuse: the tool does not run and the result carries that code. Any
    other exception is logged and this implementation is skipped. May be async.
    """


@hookspec
def ksi_tool_post_execute(context):
    """A tool has run (or failed). Observe it, or annotate the result.

    context: a `PostExecuteContext` with `name`, `call_id`, `request_id`, `agent_id`,
        `arguments`, `ok`, `result`, `error` and `annotations`, a dict returned in the
        result's `annotations`. Exceptions (a `KSIError` too) are logged and skipped.
    """
