"""The completion plugin's own hooks: other plugins implement them to take part in every
completion. Added to the daemon by the completion plugin's `PluginMetadata(hookspecs=[...])`.

Both are called with `call_each` in plugin order (dependencies, priority, name). A `KSIError`
refuses the completion with its code; any other exception is logged and that implementation is
skipped (`refuse_or_skip`). See docs/COMPLETION.md for runnable examples.
"""
from __future__ import annotations

from ...hookspecs import hookspec


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
    May be async.
    """


@hookspec
def ksi_completion_post_response(context):
    """A completion has its answer, before it is stored and sent. Observe it or annotate it.

    context: a `PostResponseContext` with `request_id`, `session_id`, `agent_id`, `model`,
        `messages` (what was sent), `text`, `usage`, `cost_usd`, `attempts` and `annotations`,
        a dict whose entries are returned to the client in the result's `annotations`.
    Exceptions other than `KSIError` are logged and ignored. May be async.
    """


@hookspec(firstresult=True)
def ksi_completion_agent_here(agent_id):
    """Does the agent `agent_id` run on this daemon? True, False, or None (cannot say).

    A completion of an agent is one of its turns, and only the daemon that runs the agent may
    run it. The completion plugin asks before it resumes, at start, a journaled completion of
    an agent that has no outcome: on False it ends it as `moved` instead (the agent's home asks
    for that turn again, under the same request_id, on its own daemon). It asks again when a
    request repeats the request_id of such a completion: True runs it anew (the agent has come
    back here). And for a result committed at a stop whose turns were not stored yet: on False
    they are left to the agent's home, which runs that turn again and stores it. The agent
    plugin implements it in cluster mode (an agent runs on the node
    holding its lease); the single daemon, where every agent is this daemon's, says None.
    Called on the request path: it must be a plain function, not async.
    """
