"""Calling `ksi_completion_pre_call` / `ksi_completion_post_response` in every active plugin.

Each implementation runs on its own, in plugin order, and may be sync or async. One that raises
KSIError refuses the completion with that code; any other exception is logged and that
implementation is skipped, so a broken plugin never breaks completions.
"""
from __future__ import annotations

from ...protocol import KSIError
from ...event_system import call_hook


class CompletionHooks:
    def __init__(self, manager, log):
        self.manager, self.log = manager, log

    async def pre_call(self, context) -> None:
        await self._call_each("ksi_completion_pre_call", context)

    async def post_response(self, context) -> None:
        await self._call_each("ksi_completion_post_response", context)

    async def _call_each(self, hook_name: str, context) -> None:
        caller = getattr(self.manager.pm.hook, hook_name, None) if self.manager else None
        if caller is None:
            return
        # pluggy lists implementations last-registered first; plugin order is the reverse.
        for impl in reversed(caller.get_hookimpls()):
            record = self.manager.records.get(impl.plugin_name)
            if record is not None and record.state != "active":
                continue
            try:
                await call_hook(impl.function, tuple(impl.argnames), context=context)
            except KSIError:
                raise
            except Exception as exc:  # noqa: BLE001 - isolate the plugin, keep the completion
                self.log.error("completion_hook_failed", hook=hook_name,
                               plugin=impl.plugin_name, error=repr(exc))
