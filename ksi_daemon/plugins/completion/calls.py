"""One call to a model through litellm: plain or streamed, with usage and cost when known."""
from __future__ import annotations

import contextlib
from typing import Callable

from . import offline_model

# litellm's own retries are off: the plugin retries, so that each attempt is announced.
NO_HIDDEN_RETRIES = {"num_retries": 0, "max_retries": 0}


class Answer:
    __slots__ = ("text", "usage", "cost_usd", "chunks", "tool_calls")

    def __init__(self, text: str, usage: dict, cost_usd: float | None, chunks: int = 0,
                 tool_calls: list[dict] | None = None):
        self.text, self.usage, self.cost_usd, self.chunks = text, usage, cost_usd, chunks
        # [{"id", "name" (the model name), "arguments" (a JSON string, as the model wrote it)}]
        self.tool_calls = tool_calls or []


async def call_model(litellm, model: str, messages: list[dict], params: dict,
                     timeout_s: float, session_id: str,
                     on_delta: Callable[[str], None] | None = None,
                     tools: list[dict] | None = None, mcp: dict | None = None) -> Answer:
    """Ask `model`; with `on_delta`, stream and hand each text delta to it as it arrives;
    with `tools` (OpenAI's format), the answer may be tool calls instead of text; `mcp` is
    the MCP config of a `claude-cli/...` call (mcp:agent_config's reply)."""
    if offline_model.runs(model):
        return await _ask_offline(messages, tools, on_delta)
    metadata = {"ksi_session_id": session_id}
    if mcp is not None:
        metadata["ksi_mcp"] = mcp
    kwargs = {**NO_HIDDEN_RETRIES, **params, "model": model, "messages": messages,
              "timeout": timeout_s, "metadata": metadata}
    if tools:
        kwargs["tools"] = tools
    if on_delta is None:
        response = await litellm.acompletion(**kwargs)
        message = response.choices[0].message
        text = message.content or ""
        usage = usage_dict(getattr(response, "usage", None))
        return Answer(text, usage or estimate_usage(messages, text),
                      cost_of(litellm, model, response, usage),
                      tool_calls=_calls_of(getattr(message, "tool_calls", None)))
    response = await litellm.acompletion(**kwargs, stream=True,
                                         stream_options={"include_usage": True})
    parts: list[str] = []
    calls: dict[int, dict] = {}
    usage = None
    try:
        async for chunk in response:
            choices = getattr(chunk, "choices", None) or ()
            delta = choices[0].delta if choices else None
            if delta is not None and delta.content:
                parts.append(delta.content)
                on_delta(delta.content)
            if delta is not None and getattr(delta, "tool_calls", None):
                _gather_call_pieces(calls, delta.tool_calls)
            usage = usage_dict(getattr(chunk, "usage", None)) or usage
    finally:
        # A cancelled or failed call hangs up now: left to garbage collection, the stream (kept
        # alive by the exception's frames) would let the provider go on generating, and billing.
        close = getattr(response, "aclose", None)
        if close is not None:
            with contextlib.suppress(Exception):  # the call's own outcome is what matters
                await close()
    text = "".join(parts)
    usage = usage or estimate_usage(messages, text)
    return Answer(text, usage, cost_of(litellm, model, None, usage), len(parts),
                  [calls[i] for i in sorted(calls)])


async def _ask_offline(messages: list[dict], tools: list[dict] | None,
                       on_delta: Callable[[str], None] | None) -> Answer:
    """The offline model, called without litellm: the same answer its litellm provider gives
    (offline_model.build_provider), without importing litellm, which costs a daemon seconds of
    CPU and a few hundred MB: a daemon that only ever talks to the offline model never pays it."""
    calls = offline_model.tool_calls_for(messages, offline_model.offered_names(tools))
    text = "" if calls else await offline_model.answer_without_blocking(messages)
    pieces = [piece for piece in offline_model.chunks_of(text) if piece] if on_delta else []
    for piece in pieces:
        on_delta(piece)
    return Answer(text, offline_model.usage_of(messages, text), 0.0, len(pieces), calls)


def _calls_of(tool_calls) -> list[dict]:
    return [{"id": call.id, "name": call.function.name,
             "arguments": call.function.arguments or ""} for call in tool_calls or ()]


def _gather_call_pieces(calls: dict[int, dict], pieces) -> None:
    """A streamed tool call comes in pieces sharing an index: the id and name first, then its
    arguments a few characters at a time."""
    for position, piece in enumerate(pieces):
        index = piece.index if getattr(piece, "index", None) is not None else position
        call = calls.setdefault(index, {"id": "", "name": "", "arguments": ""})
        call["id"] = piece.id or call["id"]
        function = piece.function
        if function is not None:
            call["name"] = function.name or call["name"]
            call["arguments"] += function.arguments or ""


def usage_dict(usage) -> dict | None:
    if usage is None:
        return None
    get = usage.get if isinstance(usage, dict) else lambda k, d=None: getattr(usage, k, d)
    prompt, completion = int(get("prompt_tokens", 0) or 0), int(get("completion_tokens", 0) or 0)
    if not prompt and not completion:
        return None
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": int(get("total_tokens", 0) or prompt + completion)}


def estimate_usage(messages: list[dict], text: str) -> dict:
    """When a server reports no usage, count the way the offline model does, and say nothing
    more precise than that."""
    return offline_model.usage_of(messages, text)


def cost_of(litellm, model: str, response, usage: dict) -> float | None:
    """litellm's price for the call when it knows the model; the offline model is free."""
    if model.startswith(offline_model.PROVIDER + "/"):
        return 0.0
    hidden = getattr(response, "_hidden_params", None) or {}
    if hidden.get("ksi_cost_usd") is not None:
        return float(hidden["ksi_cost_usd"])
    if "response_cost" in hidden:
        # litellm priced the call already (None: it does not know the model); asking again
        # would cost 0.1 ms on every completion.
        return None if hidden["response_cost"] is None else float(hidden["response_cost"])
    try:
        if response is not None:
            return float(litellm.completion_cost(completion_response=response))
        prompt_cost, completion_cost = litellm.cost_per_token(
            model=model, prompt_tokens=usage["prompt_tokens"],
            completion_tokens=usage["completion_tokens"])
        return float(prompt_cost + completion_cost)
    except Exception:  # noqa: BLE001 - an unpriced model has no known cost, not an error
        return None
