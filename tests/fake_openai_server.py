"""A local OpenAI-compatible chat completions server for tests and benchmarks (loopback only).

The model name in the request chooses the behaviour, so one server serves every test:

    echo...          answers with the conversation it was sent (plain JSON or SSE)
    jitter...        like echo, after a short delay that differs from request to request
    pause...         like echo, after one second
    slow...          streams one word every 0.2 s (40 words); plain calls take as long (with
                     tools it calls them first, as below, then answers so)
    hang...          answers nothing for a minute; a client leaving is counted in `hangups`
    gated...         like echo, once the test calls `server.open_gate()` (at most a minute)
    ratelimited-KEY  the first call per KEY gets 429 with `Retry-After: 1`, later calls echo
    broken-KEY       always 500

Tool calls, whatever the model name: when the request offers `tools` and a line of the last
user message reads `/tool NAME {json arguments}`, the answer is one tool call per such line (ids
`fake_call_<messages>_<line>`; NAME as the model name of an offered tool when it is one, with ":"
as "_", else as written), plain or streamed in pieces (id and name first, then the arguments in
two halves), finish_reason "tool_calls". Once `tool` messages follow that user message, the
answer is text: "tool results: " and each tool message's content, joined by " | ".

    looping...       asks for the same tool calls again after every result (never answers)

Like OpenAI, it refuses (400) a history in which an assistant's tool call has no `tool`
message answering it, or a `tool` message answers no call.

Every request is recorded in `server.requests` (model, messages, stream, tools, time).

One call held, whatever the model: `held = server.hold(MODEL, call=N)` holds the N-th call to
MODEL (counting from 1) once it has arrived, until the test calls `held.release()` (at most a
minute); `held.wait_reached()` returns once it is there. A test that needs "a call under way"
when something happens gets exactly that call under way for as long as it takes, where a
`pause` model gives it one second.
"""
from __future__ import annotations

import hashlib
import select
import socket
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler

import orjson

from local_http_server import LocalHTTPServer


def echo_text(messages: list[dict]) -> str:
    said = [str(m.get("content")) for m in messages if m.get("role") == "user"]
    text = f"turn {len(said)}: you said '{said[-1] if said else ''}'"
    if len(said) > 1:
        text += " after " + " / ".join(f"'{s}'" for s in said[:-1])
    return text


def history_problem(messages: list[dict]) -> str | None:
    waiting: set = set()
    for message in messages:
        if message.get("role") == "tool":
            if message.get("tool_call_id") not in waiting:
                return f"a tool message answers no call: {message.get('tool_call_id')}"
            waiting.discard(message["tool_call_id"])
            continue
        if waiting:
            return f"tool calls without their result: {sorted(waiting)}"
        waiting = {call.get("id") for call in message.get("tool_calls") or ()}
    return f"tool calls without their result: {sorted(waiting)}" if waiting else None


def tool_calls_for(messages: list[dict], tools: list[dict],
                   again: bool = False) -> list[dict] | None:
    offered = {(t.get("function") or {}).get("name") for t in tools}
    last_user = max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=-1)
    if not offered or last_user < 0 or (not again and any(m.get("role") == "tool"
                                                          for m in messages[last_user + 1:])):
        return None
    calls = []
    for line in str(messages[last_user].get("content") or "").splitlines():
        if line.strip().startswith("/tool "):
            name, _, arguments = line.strip()[len("/tool "):].partition(" ")
            model_name = name.replace(":", "_")
            calls.append({"id": f"fake_call_{len(messages)}_{len(calls)}", "type": "function",
                          "function": {"name": model_name if model_name in offered else name,
                                       "arguments": arguments.strip() or "{}"}})
    return calls or None


def tool_results_text(messages: list[dict]) -> str | None:
    last_user = max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=-1)
    results = [str(m.get("content")) for m in messages[last_user + 1:] if m.get("role") == "tool"]
    return "tool results: " + " | ".join(results) if results else None


def usage_for(messages: list[dict], text: str) -> dict:
    prompt = sum(len(str(m.get("content", "")).split()) for m in messages)
    completion = len(text.split())
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion}



class FakeOpenAIHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Buffer each response into one write: headers and body sent apart meet the peer's delayed
    # ACK and cost 40 ms per call on loopback. Streams flush every event themselves.
    wbufsize = 1 << 16

    def log_message(self, *args):  # keep test output clean
        pass

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = orjson.loads(self.rfile.read(length) or b"{}")
        model = str(body.get("model", ""))
        messages = body.get("messages") or []
        stream = bool(body.get("stream"))
        server: FakeOpenAIServer = self.server.owner
        held = server.record(model, messages, stream, body.get("tools"))
        if held is not None:
            held.hold_here()
        if not self.path.rstrip("/").endswith("/chat/completions"):
            return self._json(404, {"error": {"message": f"no route {self.path}"}})
        if problem := history_problem(messages):
            return self._json(400, {"error": {"message": problem,
                                              "type": "invalid_request_error"}})
        if model.startswith("broken"):
            return self._json(500, {"error": {"message": "the fake server is broken on purpose",
                                              "type": "server_error"}})
        if model.startswith("ratelimited") and server.count(model) == 1:
            return self._json(429, {"error": {"message": "slow down", "type": "rate_limit"}},
                              {"Retry-After": "1"})
        if model.startswith("gated"):
            server.gate.wait(60)
        if model.startswith("hang"):
            if self._client_left_within(60):
                server.note_hangup(model)  # nobody to answer: the caller gave up the call
                self.close_connection = True
                return
            return self._json(500, {"error": {"message": "hung"}})
        if model.startswith("jitter"):
            digest = hashlib.sha256(orjson.dumps(messages)).digest()
            time.sleep(digest[0] / 255 * 0.15)
        if model.startswith("pause"):
            time.sleep(1.0)
        if calls := tool_calls_for(messages, body.get("tools") or [],
                                   again=model.startswith("looping")):
            return self._tool_calls(model, calls, stream)
        if model.startswith("slow"):
            pieces = [f"word{i} " for i in range(40)]
            text = "".join(pieces)
            delay = 0.2
        else:
            text = tool_results_text(messages) or echo_text(messages)
            pieces = [piece + " " for piece in text.split(" ")]
            pieces[-1] = pieces[-1][:-1]
            delay = 0.0
        usage = usage_for(messages, text)
        if stream:
            return self._stream(model, pieces, usage, delay,
                                bool((body.get("stream_options") or {}).get("include_usage")))
        time.sleep(delay * len(pieces))
        return self._json(200, {
            "id": "chatcmpl-fake", "object": "chat.completion", "created": int(time.time()),
            "model": model, "usage": usage,
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": text}}]})

    def _tool_calls(self, model: str, calls: list[dict], stream: bool):
        usage = {"prompt_tokens": 1, "completion_tokens": len(calls), "total_tokens": 1 + len(calls)}
        if not stream:
            return self._json(200, {
                "id": "chatcmpl-fake", "object": "chat.completion", "created": int(time.time()),
                "model": model, "usage": usage,
                "choices": [{"index": 0, "finish_reason": "tool_calls",
                             "message": {"role": "assistant", "content": None,
                                         "tool_calls": calls}}]})
        deltas = []
        for index, call in enumerate(calls):
            arguments = call["function"]["arguments"]
            half = len(arguments) // 2
            deltas.append({"tool_calls": [{"index": index, "id": call["id"], "type": "function",
                                           "function": {"name": call["function"]["name"],
                                                        "arguments": ""}}]})
            for part in (arguments[:half], arguments[half:]):
                deltas.append({"tool_calls": [{"index": index, "function": {"arguments": part}}]})
        self._stream(model, [], usage, 0.0, True, deltas, "tool_calls")

    def _client_left_within(self, seconds: float) -> bool:
        """Wait `seconds`, or less if the client closes the connection (then True)."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            readable, _, _ = select.select([self.connection], [], [], min(left, 0.05))
            if not readable:
                continue
            if not self.connection.recv(1, socket.MSG_PEEK):
                return True
            time.sleep(min(left, 0.05))  # a next request already sent: not a hang-up
        return False

    def _json(self, status: int, payload: dict, headers: dict | None = None):
        data = orjson.dumps(payload)
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _stream(self, model: str, pieces: list[str], usage: dict, delay: float,
                include_usage: bool, deltas: list[dict] = (), finish: str = "stop"):
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True

        def event(choices, extra=None):
            chunk = {"id": "chatcmpl-fake", "object": "chat.completion.chunk",
                     "created": int(time.time()), "model": model, "choices": choices,
                     **(extra or {})}
            self.wfile.write(b"data: " + orjson.dumps(chunk) + b"\n\n")
            self.wfile.flush()

        try:
            event([{"index": 0, "delta": {"role": "assistant", "content": ""},
                    "finish_reason": None}])
            for piece in pieces:
                if delay:
                    time.sleep(delay)
                event([{"index": 0, "delta": {"content": piece}, "finish_reason": None}])
            for delta in deltas:
                event([{"index": 0, "delta": delta, "finish_reason": None}])
            event([{"index": 0, "delta": {}, "finish_reason": finish}])
            if include_usage:
                event([], {"usage": usage})
            self.wfile.write(b"data: [DONE]\n\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            self.server.owner.disconnects += 1


class HeldCall:
    """One call the server holds (see `FakeOpenAIServer.hold`)."""

    def __init__(self):
        self._reached, self._released = threading.Event(), threading.Event()

    def hold_here(self) -> None:
        self._reached.set()
        self._released.wait(60)

    def wait_reached(self, timeout: float = 60.0) -> None:
        assert self._reached.wait(timeout), "the held call never reached the server"

    def release(self) -> None:
        self._released.set()


class FakeOpenAIServer(LocalHTTPServer):
    """`with FakeOpenAIServer() as server:` serves on 127.0.0.1 at `server.api_base`."""

    def __init__(self):
        super().__init__(FakeOpenAIHandler)
        self.disconnects = 0
        self.hangups: Counter = Counter()  # per model: calls whose client left before the answer
        self._counts: Counter = Counter()
        self.gate = threading.Event()
        self._held: dict[tuple[str, int], HeldCall] = {}
        self.api_base = f"{self.url}/v1"

    def record(self, model: str, messages: list, stream: bool, tools=None) -> HeldCall | None:
        """Count and log the call; the HeldCall it is, if the test holds it."""
        with self._lock:
            self._counts[model] += 1
            self.requests.append({"model": model, "messages": messages, "stream": stream,
                                  "tools": tools, "time": time.time()})
            return self._held.get((model, self._counts[model]))

    def hold(self, model: str, call: int = 1) -> HeldCall:
        with self._lock:
            assert self._counts[model] < call, f"call {call} to {model} was already made"
            return self._held.setdefault((model, call), HeldCall())

    def note_hangup(self, model: str) -> None:
        with self._lock:
            self.hangups[model] += 1

    def count(self, model: str) -> int:
        with self._lock:
            return self._counts[model]

    def open_gate(self) -> None:
        self.gate.set()

    def close_gate(self) -> None:
        self.gate.clear()

    def calls_saying(self, text: str) -> int:
        """How many calls had `text` as their last message (one request's calls)."""
        with self._lock:
            return sum(1 for r in self.requests
                       if r["messages"] and r["messages"][-1].get("content") == text)

    def calls_to(self, model: str) -> list[dict]:
        with self._lock:
            return [r for r in self.requests if r["model"] == model]


if __name__ == "__main__":
    server = FakeOpenAIServer()
    server.serve_until_killed(server.api_base)
