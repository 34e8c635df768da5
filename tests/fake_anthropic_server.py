"""A local fake of the Anthropic Messages API, for driving the real `claude` tool in tests.

Point the tool at it with ANTHROPIC_BASE_URL. Every POST /v1/messages is answered (plain JSON or
SSE) with `claude-fake heard: <the last thing the user typed>` (a prompt containing "take your
time" instead streams 100 words, one every 0.2 s), and recorded in `server.requests`
so a test can see what the tool sent, e.g. that a resumed session carries the earlier turns.
"""
from __future__ import annotations

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
        text = f"claude-fake heard: {typed}"
        delay = 0.0
        if "take your time" in typed:
            text = " ".join(f"word{i}" for i in range(100))
            delay = 0.2
        model = body.get("model", "claude-fake")
        usage = {"input_tokens": 11, "output_tokens": len(text.split())}
        if body.get("stream"):
            return self._stream(model, text, usage, delay)
        self._json(200, {"id": "msg_fake", "type": "message", "role": "assistant",
                         "model": model, "content": [{"type": "text", "text": text}],
                         "stop_reason": "end_turn", "stop_sequence": None, "usage": usage})

    def _json(self, status: int, payload: dict):
        data = orjson.dumps(payload)
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _stream(self, model: str, text: str, usage: dict, delay: float = 0.0):
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
        send("content_block_start", {"type": "content_block_start", "index": 0,
                                     "content_block": {"type": "text", "text": ""}})
        words = text.split(" ")
        for i, word in enumerate(words):
            time.sleep(delay)
            send("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {
                "type": "text_delta", "text": word + (" " if i < len(words) - 1 else "")}})
        send("content_block_stop", {"type": "content_block_stop", "index": 0})
        send("message_delta", {"type": "message_delta",
                               "delta": {"stop_reason": "end_turn", "stop_sequence": None},
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
