"""Calling `ksi_completion_pre_call` / `ksi_completion_post_response` and asking
`ksi_completion_agent_here` (specs in hookspecs.py).

Each implementation runs on its own, in plugin order (dependencies, priority, name), and may be
sync or async. One that raises KSIError refuses the completion with that code; any other
exception is logged and that implementation is skipped, so a broken plugin never breaks
completions (the runner's `refuse_or_skip` policy).
"""
from __future__ import annotations

from ...plugin_base import log_and_skip, refuse_or_skip


class CompletionHooks:
    def __init__(self, context):
        # The runner keeps these up to date when a plugin fails; nothing is looked up per call.
        self._pre_call = context.hook("ksi_completion_pre_call")
        self._post_response = context.hook("ksi_completion_post_response")
        self._agent_here = context.hook("ksi_completion_agent_here")

    async def pre_call(self, call) -> None:
        if self._pre_call:
            await self._pre_call.call_each(refuse_or_skip, context=call)

    async def post_response(self, seen) -> None:
        if self._post_response:
            await self._post_response.call_each(refuse_or_skip, context=seen)

    def agent_elsewhere(self, agent_id: str | None) -> bool:
        """True only when a plugin says the agent does not run on this daemon: whoever cannot
        say (or fails to) leaves its completions running here, as they always did."""
        if agent_id is None or not self._agent_here:
            return False
        return self._agent_here.call_first_at_once(log_and_skip, agent_id=agent_id) is False
