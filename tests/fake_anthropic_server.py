"""A local fake of the Anthropic Messages API, for driving the real `claude` tool in tests.

Point the tool at it with ANTHROPIC_BASE_URL. Every POST /v1/messages is answered (plain JSON or
SSE) with `claude-fake heard: <the last thing the user typed>` (a prompt containing "take your
time" instead streams 100 words, one every 0.2 s), and recorded in `server.requests`
so a test can see what the tool sent, e.g. that a resumed session carries the earlier turns.

Tools: a prompt saying `call <tool> with <JSON object>` is answered with a `tool_use` of that
tool with that input, if the request offers a tool of that name (else with text saying it does
not); the request that carries its `tool_result` is answered `claude-fake got: <its text>`.
"""
from __future__ import annotations

import itertools
import re
import time
from http.server import BaseHTTPRequestHandler

import orjson

from local_http_server import LocalHTTPServer


def texts_of(message: dict) -> list[str]:
    content = message.get("content")
    if isinstance(content, str):
        return [content]
    return [block.get("text", "") for block in content or ()
            if isinstance(block, dict) and block.get("type") == "text"]


def typed_by_user(messages: list[dict]) -> str:
    """The last user text that is not one of the tool's own reminders."""
    for message in reversed(messages):
        if message.get("role") != "user":
            continue
        for text in reversed(texts_of(message)):
            if text.strip() and not text.lstrip().startswith("<"):
                return text.strip()
    return ""


TOOL_CALL = re.compile(r"call (\S+) with (\{.*\})", re.S)
_tool_use_ids = itertools.count(1)


def tool_result_of(messages: list[dict]) -> str | None:
    """The text of the tool_result the last message carries, if it carries one."""
    content = messages[-1].get("content") if messages else None
    for block in content if isinstance(content, list) else ():
        if isinstance(block, dict) and block.get("type") == "tool_result":
            inner = block.get("content")
            return inner if isinstance(inner, str) else "".join(texts_of({"content": inner}))
    return None


def answer_to(body: dict, typed: str) -> list[dict]:
    """The content blocks of the answer: text, or one tool_use when the prompt asks for it."""
    result = tool_result_of(body.get("messages") or [])
    if result is not None:
        return [{"type": "text", "text": f"claude-fake got: {result}"}]
    wanted = TOOL_CALL.search(typed)
    if wanted is None:
        return [{"type": "text", "text": f"claude-fake heard: {typed}"}]
    name = wanted[1]
    if name not in {tool.get("name") for tool in body.get("tools") or ()}:
        return [{"type": "text", "text": f"claude-fake has no tool {name}"}]
    return [{"type": "tool_use", "id": f"toolu_fake_{next(_tool_use_ids)}", "name": name,
             "input": orjson.loads(wanted[2])}]


class FakeAnthropicHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Buffer each response into one write: headers and body sent apart meet the peer's delayed
    # ACK and cost 40 ms per call on loopback. Streams flush every event themselves.
    wbufsize = 1 << 16

    def log_message(self, *args):
        pass

    def do_GET(self):
        self._json(404, {"type": "error", "error": {"type": "not_found_error",
                                                    "message": f"no route {self.path}"}})

    def do_HEAD(self):
        self.do_GET()

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = orjson.loads(self.rfile.read(length) or b"{}")
        path = self.path.split("?", 1)[0].rstrip("/")
        if path.endswith("/messages/count_tokens"):
            return self._json(200, {"input_tokens": 42})
        if not path.endswith("/v1/messages"):
            return self._json(404, {"type": "error", "error": {"type": "not_found_error",
                                                               "message": path}})
        messages = body.get("messages") or []
        self.server.owner.record(body)
        typed = typed_by_user(messages)
        blocks = answer_to(body, typed)
        delay = 0.0
        if "take your time" in typed:
            blocks = [{"type": "text", "text": " ".join(f"word{i}" for i in range(100))}]
            delay = 0.2
        model = body.get("model", "claude-fake")
        usage = {"input_tokens": 11,
                 "output_tokens": len(" ".join(b.get("text", "x") for b in blocks).split())}
        stop = "tool_use" if blocks[-1]["type"] == "tool_use" else "end_turn"
        if body.get("stream"):
            return self._stream(model, blocks, stop, usage, delay)
        self._json(200, {"id": "msg_fake", "type": "message", "role": "assistant",
                         "model": model, "content": blocks, "stop_reason": stop,
                         "stop_sequence": None, "usage": usage})

    def _json(self, status: int, payload: dict):
        data = orjson.dumps(payload)
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _stream(self, model: str, blocks: list[dict], stop: str, usage: dict,
                delay: float = 0.0):
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True

        def send(kind: str, data: dict) -> None:
            self.wfile.write(f"event: {kind}\n".encode() + b"data: " + orjson.dumps(data) +
                             b"\n\n")
            self.wfile.flush()

        send("message_start", {"type": "message_start", "message": {
            "id": "msg_fake", "type": "message", "role": "assistant", "model": model,
            "content": [], "stop_reason": None, "stop_sequence": None,
            "usage": {"input_tokens": usage["input_tokens"], "output_tokens": 1}}})
        for index, block in enumerate(blocks):
            if block["type"] == "tool_use":
                send("content_block_start", {"type": "content_block_start", "index": index,
                                             "content_block": {**block, "input": {}}})
                send("content_block_delta", {"type": "content_block_delta", "index": index,
                                             "delta": {"type": "input_json_delta",
                                                       "partial_json": orjson.dumps(
                                                           block["input"]).decode()}})
            else:
                send("content_block_start", {"type": "content_block_start", "index": index,
                                             "content_block": {"type": "text", "text": ""}})
                words = block["text"].split(" ")
                for i, word in enumerate(words):
                    time.sleep(delay)
                    send("content_block_delta", {
                        "type": "content_block_delta", "index": index, "delta": {
                            "type": "text_delta",
                            "text": word + (" " if i < len(words) - 1 else "")}})
            send("content_block_stop", {"type": "content_block_stop", "index": index})
        send("message_delta", {"type": "message_delta",
                               "delta": {"stop_reason": stop, "stop_sequence": None},
                               "usage": {"output_tokens": usage["output_tokens"]}})
        send("message_stop", {"type": "message_stop"})

    def handle_one_request(self):
        try:
            super().handle_one_request()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client went away mid-stream, as on cancel


class FakeAnthropicServer(LocalHTTPServer):
    def __init__(self):
        super().__init__(FakeAnthropicHandler)
        self.base_url = self.url

    def record(self, body: dict) -> None:
        with self._lock:
            self.requests.append({**body, "received_at": time.time()})

    def all_texts(self) -> list[str]:
        with self._lock:
            return [text for r in self.requests for m in r.get("messages") or ()
                    for text in texts_of(m)]


if __name__ == "__main__":
    server = FakeAnthropicServer()
    server.serve_until_killed(server.base_url)
