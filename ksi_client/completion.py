"""The completion helpers of AsyncClient: ask, stream, cancel.

    from ksi_client import AsyncClient

    async with AsyncClient() as client:
        response = await client.create_completion("Explain quantum computing",
                                                  model="claude-cli/sonnet")
        print(response.text, response.session_id, response.usage)
        async for delta in client.stream_completion("And briefly?",
                                                    session_id=response.session_id):
            print(delta, end="")

Everything else EventClient offers (emit, subscribe, events) works on an AsyncClient too.
AsyncClient itself is assembled in async_client.py from this and the other helper mixins; the
helpers never import it (they work on whatever client they are mixed into).
"""
from __future__ import annotations

from contextlib import aclosing
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, AsyncIterator

from .errors import error_from_reply

if TYPE_CHECKING:
    from .event_client import Event

DEFAULT_COMPLETION_WAIT_S = 300.0  # the daemon's default timeout_s
MARGIN_S = 10.0  # the daemon's own deadline should speak before the client gives up
# The pushes of a streaming completion handed to the caller (the others end the stream).
STREAMED_EVENTS = frozenset({"completion:chunk", "completion:tool_call",
                             "completion:tool_result"})


@dataclass(frozen=True)
class CompletionResponse:
    """One finished completion: `.text`, `.session_id`, `.usage`, and the rest of the result."""
    text: str
    session_id: str
    usage: dict
    request_id: str
    model: str
    cost_usd: float | None = None
    duration_ms: float | None = None
    attempts: int = 1
    annotations: dict = field(default_factory=dict)
    tool_calls: list = field(default_factory=list)  # with `tools`: one record per call made
    raw: dict = field(default_factory=dict, repr=False)

    @classmethod
    def from_result(cls, result: dict) -> CompletionResponse:
        return cls(text=result.get("text", ""), session_id=result.get("session_id", ""),
                   usage=result.get("usage") or {}, request_id=result.get("request_id", ""),
                   model=result.get("model", ""), cost_usd=result.get("cost_usd"),
                   duration_ms=result.get("duration_ms"), attempts=result.get("attempts", 1),
                   annotations=result.get("annotations") or {},
                   tool_calls=result.get("tool_calls") or [], raw=result)


class CompletionCancelled(Exception):
    """The completion was cancelled (by `completion:cancel`) before it finished."""


class CompletionHelpers:
    """Mixed into AsyncClient (an EventClient): uses its emit() and events()."""
    last_response: CompletionResponse | None = None  # set when stream_completion() ends

    async def create_completion(self, prompt: str | None = None, model: str | None = None,
                                session_id: str | None = None, **options: Any,
                                ) -> CompletionResponse:
        """Ask a model and wait for its answer.

        options: any other field of `completion:request` (messages, temperature, max_tokens,
            timeout_s, priority, agent_id, request_id). Errors raise KSIError subclasses with
            the daemon's code (`not_found` for an unknown model, `timeout`, ...).
        """
        data = _request_data(prompt, model, session_id, options)
        result = await self.emit("completion:request", data, timeout=wait_for_completion(data))
        if result.get("status") == "cancelled":
            raise CompletionCancelled(f"completion {result.get('request_id')} was cancelled")
        return CompletionResponse.from_result(result)

    async def stream_completion(self, prompt: str | None = None, model: str | None = None,
                                session_id: str | None = None, **options: Any,
                                ) -> AsyncIterator[str]:
        """Yield the answer's text deltas as the model produces them.

        Leaving the loop early cancels the completion in the daemon. The final result (usage,
        session) is in `self.last_response` once the stream ends.
        """
        events = self.stream_completion_events(prompt, model, session_id, **options)
        async with aclosing(events):  # leaving early closes (and so cancels) the stream too
            async for event in events:
                if event.event == "completion:chunk":
                    yield event.data["delta"]

    async def stream_completion_events(self, prompt: str | None = None,
                                       model: str | None = None,
                                       session_id: str | None = None, **options: Any,
                                       ) -> AsyncIterator[Event]:
        """Yield the streaming completion's pushes as they come: `completion:chunk` (its
        `delta`), and, when the request has `tools`, `completion:tool_call` before each call
        runs and `completion:tool_result` (the call's record) when it is done.

        As stream_completion: leaving early cancels, errors raise, and `self.last_response`
        holds the result once the stream ends (the result itself is not yielded).
        """
        data = {**_request_data(prompt, model, session_id, options), "stream": True}
        correlation_id = self._new_correlation_id()
        stream = self.events("completion:*", correlation_id=correlation_id)
        finished = False
        request_id = None
        try:
            accepted = await self.emit("completion:async", data, correlation_id=correlation_id)
            request_id = accepted["request_id"]
            while True:
                event = await stream.get(timeout=wait_for_completion(data))
                if event.event in STREAMED_EVENTS:
                    yield event
                elif event.event == "completion:result":
                    finished = True
                    self.last_response = CompletionResponse.from_result(event.data)
                    return
                elif event.event == "completion:error":
                    finished = True
                    raise error_from_reply(event.data.get("error"))
                elif event.event == "completion:cancelled":
                    finished = True
                    raise CompletionCancelled(f"completion {request_id} was cancelled")
        finally:
            await stream.aclose()
            if request_id is not None and not finished and self.connected:
                try:
                    await self.emit("completion:cancel", {"request_id": request_id})
                except Exception:  # noqa: BLE001 - best effort while unwinding
                    pass

    async def cancel_completion(self, request_id: str) -> str:
        """Cancel a completion; returns "cancelled", "finished" or "not_found"."""
        return (await self.emit("completion:cancel", {"request_id": request_id}))["status"]


def _request_data(prompt, model, session_id, options: dict) -> dict:
    data = {key: value for key, value in options.items() if value is not None}
    for key, value in (("prompt", prompt), ("model", model), ("session_id", session_id)):
        if value is not None:
            data[key] = value
    return data


def wait_for_completion(data: dict) -> float:
    """How long the client waits for a completion whose request data is `data`."""
    return float(data.get("timeout_s") or DEFAULT_COMPLETION_WAIT_S) + MARGIN_S
