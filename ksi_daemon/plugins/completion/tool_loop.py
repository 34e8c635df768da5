"""The tool-calling loop of one completion: model -> tool calls -> results -> model ...

The tools were resolved once for the request (`tools:resolve`); each call runs through
`tools:execute`, which answers every tool failure as a normal reply, so a failing tool is a
result the model reads. Every step is committed to the journal before the next: the model's
message asking for tools, then each call's tool message (rows numbered so that the results of
one step keep the order of its calls, however they finish). A loop rebuilt from those rows after
a stop answers the calls cut off mid-way: it runs them again if their tool is idempotent, and
otherwise tells the model they were interrupted, so no call without a result ever reaches a
model or the conversation.
"""
from __future__ import annotations

import asyncio
import time
from typing import Awaitable, Callable

import orjson

from ...protocol import HANDLER_ERROR, NOT_FOUND, TIMEOUT, UNAVAILABLE, VALIDATION_ERROR, KSIError
from .calls import Answer

INTERRUPTED = "interrupted"

AskModel = Callable[[list[dict], list[dict]], Awaitable[Answer]]


def openai_tools_of(tools: list[dict]) -> list[dict]:
    """Resolved tools (the tool contract's TOOL objects) as litellm takes them."""
    return [{"type": "function",
             "function": {"name": tool["model_name"], "description": tool.get("description", ""),
                          "parameters": tool.get("parameters") or {"type": "object"}}}
            for tool in tools]


class ToolLoop:
    def __init__(self, *, request_id: str, agent_id: str | None, tools: list[dict],
                 max_steps: int, emit, push, journal, cancelled_by_request: Callable[[], bool]):
        self.request_id, self.agent_id, self.max_steps = request_id, agent_id, max_steps
        self.tools = {tool["model_name"]: tool for tool in tools}
        self.openai_tools = openai_tools_of(tools)
        self.emit, self.push, self.journal = emit, push, journal
        self.cancelled_by_request = cancelled_by_request
        self.transcript: list[dict] = []  # this turn's assistant tool_calls and tool messages
        self.records: list[dict] = []     # one per call, the reply's `tool_calls`
        self.steps = 0
        self.seq = 0

    # ---- after a restart ----------------------------------------------------------------------

    def restore(self, steps: list[tuple[dict, dict | None]]) -> None:
        """Take up the journaled steps of this request."""
        for message, record in steps:
            self.transcript.append(message)
            if record is not None:
                self.records.append(record)
            if message.get("role") == "assistant":
                self.steps += 1
            self.seq += 1

    def _cut_off(self) -> list[dict]:
        """The calls of the last journaled step that have no result."""
        asked = next((m for m in reversed(self.transcript) if m.get("role") == "assistant"),
                     None)
        if asked is None:
            return []
        answered = {m.get("tool_call_id") for m in self.transcript if m.get("role") == "tool"}
        return [c for c in asked["tool_calls"] if c["id"] not in answered]

    # ---- the loop -----------------------------------------------------------------------------

    async def run(self, messages: list[dict], ask: AskModel) -> Answer:
        """Ask the model with `messages` + this turn's steps until it answers with text."""
        cut_off = self._cut_off()
        if cut_off:
            await self._answer(cut_off, resumed=True)
        while True:
            answer = await ask(messages + self.transcript, self.openai_tools)
            if not answer.tool_calls:
                return answer
            if self.steps >= self.max_steps:
                raise KSIError(TIMEOUT, f"the model still asked for tools after "
                               f"{self.max_steps} rounds of tool calls (max_tool_steps)",
                               {"max_tool_steps": self.max_steps, "tool_calls": self.records,
                                "transcript": self.transcript,
                                "asked": [_wire_call(call) for call in answer.tool_calls]})
            self.steps += 1
            asked = {"role": "assistant", "content": answer.text or None,
                     "tool_calls": [_wire_call(call) for call in answer.tool_calls]}
            await self._commit(asked)
            await self._answer(asked["tool_calls"])

    async def _answer(self, calls: list[dict], resumed: bool = False) -> None:
        """Run `calls` concurrently; each result is committed as soon as it is in."""
        first_seq, self.seq = self.seq, self.seq + len(calls)
        slots: list[tuple[dict, dict] | None] = [None] * len(calls)

        async def run_one(index: int, call: dict) -> None:
            record = await self._run_call(call, resumed)
            message = _tool_message(call["id"], record)
            await self.journal.step(self.request_id, first_seq + index, message, record)
            slots[index] = (message, record)
            self._announce_result(record)
        try:
            await asyncio.gather(*(run_one(i, call) for i, call in enumerate(calls)))
        except asyncio.CancelledError:
            if self.cancelled_by_request():  # (a shutdown leaves them to the resumed loop)
                for index, call in enumerate(calls):
                    if slots[index] is None:
                        record = self._interrupted(call, "the request was cancelled")
                        self.journal.step(self.request_id, first_seq + index,
                                          _tool_message(call["id"], record), record)
            raise
        for message, record in slots:
            self.transcript.append(message)
            self.records.append(record)

    async def _run_call(self, call: dict, resumed: bool) -> dict:
        tool = self.tools.get(call["function"]["name"])
        name = tool["name"] if tool is not None else call["function"]["name"]
        arguments = _arguments_of(call["function"]["arguments"])
        if resumed and not (tool is not None and tool.get("idempotent")):
            return self._interrupted(call, "the daemon stopped while this call ran; its tool "
                                           "is not idempotent, so it was not run again")
        self.push("completion:tool_call", {"request_id": self.request_id, "call_id": call["id"],
                                           "name": name, "arguments": arguments,
                                           "step": self.steps})
        started = time.perf_counter()
        if tool is None:
            reply = _failed(name, call["id"], NOT_FOUND,
                            f"the model asked for {name!r}, which this request does not offer")
        elif isinstance(arguments, str):
            reply = _failed(name, call["id"], VALIDATION_ERROR,
                            "the arguments are not a JSON object")
        else:
            reply = await self._execute(name, arguments, call["id"])
        return {"call_id": call["id"], "name": name, "arguments": arguments,
                "ok": bool(reply.get("ok")), "result": reply.get("result"),
                "error": reply.get("error"), "step": self.steps,
                "duration_ms": reply.get("duration_ms",
                                         round((time.perf_counter() - started) * 1000, 3))}

    async def _execute(self, name: str, arguments: dict, call_id: str) -> dict:
        try:
            return await self.emit("tools:execute", {
                "name": name, "arguments": arguments, "call_id": call_id,
                "request_id": self.request_id, "agent_id": self.agent_id, "timeout_s": None})
        except KSIError as exc:  # tools:execute itself refused or is not there: still a result
            return _failed(name, call_id, exc.code, exc.message)
        except Exception as exc:  # noqa: BLE001 - a tool never takes its completion down
            return _failed(name, call_id, HANDLER_ERROR, repr(exc))

    def _interrupted(self, call: dict, why: str) -> dict:
        tool = self.tools.get(call["function"]["name"])
        return {"call_id": call["id"],
                "name": tool["name"] if tool is not None else call["function"]["name"],
                "arguments": _arguments_of(call["function"]["arguments"]), "ok": False,
                "result": INTERRUPTED, "error": {"code": UNAVAILABLE,
                                                 "message": f"{INTERRUPTED}: {why}"},
                "step": self.steps, "duration_ms": 0.0}

    def _announce_result(self, record: dict) -> None:
        self.push("completion:tool_result", {"request_id": self.request_id, **record})

    async def _commit(self, message: dict) -> None:
        seq, self.seq = self.seq, self.seq + 1
        await self.journal.step(self.request_id, seq, message)
        self.transcript.append(message)


def _wire_call(call: dict) -> dict:
    """A call as the model gave it, in the OpenAI message shape."""
    return {"id": call["id"], "type": "function",
            "function": {"name": call["name"], "arguments": call["arguments"]}}


def _arguments_of(text: str):
    """The arguments as a JSON object, or the text itself when it is not one."""
    try:
        value = orjson.loads(text or "{}")
    except orjson.JSONDecodeError:
        return text
    return value if isinstance(value, dict) else text


def _failed(name: str, call_id: str, code: str, message: str) -> dict:
    return {"name": name, "call_id": call_id, "ok": False, "result": None,
            "error": {"code": code, "message": message}, "duration_ms": 0.0}


def _tool_message(call_id: str, record: dict) -> dict:
    """What the model reads: the result's JSON, or the error's."""
    content = record["result"] if record["ok"] else {"error": record["error"]}
    return {"role": "tool", "tool_call_id": call_id, "content": orjson.dumps(content).decode()}
