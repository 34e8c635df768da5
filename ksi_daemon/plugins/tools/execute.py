"""One tool call, start to end: pre-execute hooks, permission, the run under its timeout, the
encodability check, post-execute hooks. Every failure becomes the result's `error`; only
cancellation of the caller passes through.
"""
from __future__ import annotations

import asyncio
import time

import orjson
import pydantic

from ...plugin_base import refuse_or_skip
from ...protocol import (FORBIDDEN, HANDLER_ERROR, NOT_FOUND, TIMEOUT, VALIDATION_ERROR,
                         KSIError)
from .models import ExecuteRequest, PostExecuteContext, PreExecuteContext
from .permissions import may_call
from .registry import Tool


def log_and_skip(impl, hook: str, exc: Exception) -> None:
    """Post-execute observers cannot refuse a call that already ran: everything is skipped."""
    refuse_or_skip(impl, hook, RuntimeError(repr(exc)))


class ToolExecutor:
    def __init__(self, context, default_timeout_s: float):
        self._pre = context.hook("ksi_tool_pre_execute")
        self._post = context.hook("ksi_tool_post_execute")
        self._default_timeout_s = default_timeout_s

    async def execute(self, tool: Tool | None, call: ExecuteRequest) -> dict:
        started = time.perf_counter()
        if tool is None:
            error = {"code": NOT_FOUND, "message": f"no tool named {call.name}; see tools:list"}
            return reply(call, False, None, error, started, {})
        seen = PreExecuteContext(name=tool.name, call_id=call.call_id,
                                 request_id=call.request_id, agent_id=call.agent_id,
                                 source=tool.source, arguments=dict(call.arguments))
        try:
            result = await self._run(tool, call, seen)
            ok, error = True, None
        except asyncio.CancelledError:
            if asyncio.current_task().cancelling():
                raise  # the caller is being cancelled: no tool failed
            ok, result, error = False, None, {"code": HANDLER_ERROR,
                                              "message": "the tool was cancelled"}
        except Exception as exc:  # noqa: BLE001 - every failure is the model's to read
            ok, result, error = False, None, error_of(exc, tool)
        annotations = await self._annotate(tool, call, seen.arguments, ok, result, error)
        return reply(call, ok, result, error, started, annotations)

    async def _run(self, tool: Tool, call: ExecuteRequest, seen: PreExecuteContext):
        if self._pre:  # a hook may change seen.arguments in place or replace the dict
            await self._pre.call_each(refuse_or_skip, context=seen)
        if not may_call(call.agent_id, tool):
            raise KSIError(FORBIDDEN, f"{call.agent_id or 'this caller'} may not call {tool.name}")
        timeout_s = call.timeout_s or tool.timeout_s or self._default_timeout_s
        try:
            # In this task, not a new one as wait_for would make: a task starts a loop pass
            # later, behind whatever the model call just scheduled (litellm's success logging,
            # ~0.4 ms), and the next model call would wait for all of it.
            async with asyncio.timeout(timeout_s):
                result = await tool.run(seen.arguments, call.agent_id)
        except TimeoutError:
            raise KSIError(TIMEOUT, f"{tool.name} did not finish in {timeout_s} s") from None
        try:
            orjson.dumps(result)  # an output the model cannot read is the tool's failure
        except orjson.JSONEncodeError as exc:
            raise KSIError(HANDLER_ERROR, f"{tool.name} returned what is not JSON: {exc}") \
                from None
        return result

    async def _annotate(self, tool, call, arguments, ok, result, error) -> dict:
        if not self._post:
            return {}
        seen = PostExecuteContext(name=tool.name, call_id=call.call_id,
                                  request_id=call.request_id, agent_id=call.agent_id,
                                  arguments=arguments, ok=ok, result=result, error=error)
        await self._post.call_each(log_and_skip, context=seen)
        return seen.annotations


def error_of(exc: Exception, tool: Tool) -> dict:
    if isinstance(exc, KSIError):  # details name what to fix (a validation_error's fields)
        error = {"code": exc.code, "message": exc.message}
        return error if exc.details is None else {**error, "details": exc.details}
    if isinstance(exc, pydantic.ValidationError):
        return {"code": VALIDATION_ERROR, "message": str(exc)}
    return {"code": HANDLER_ERROR, "message": f"{tool.name} failed: {exc!r}"}


def reply(call: ExecuteRequest, ok: bool, result, error, started: float,
          annotations: dict) -> dict:
    return {"name": call.name, "call_id": call.call_id, "ok": ok, "result": result,
            "error": error, "duration_ms": round((time.perf_counter() - started) * 1000, 3),
            "annotations": annotations}
