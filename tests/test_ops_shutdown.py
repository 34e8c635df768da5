"""Promise 9: shutdown answers what it read, and the process always exits cleanly.

SIGTERM lands in the middle of a flood from 8 pipelining clients. The daemon reads each
connection's byte stream in order, so the lines it read are a prefix of what the client sent;
at shutdown it logs, per connection, how many bytes it had read when it closed it
(`connection_closing`, debug level). The complete lines within those bytes are exactly the
requests it read, and each of them must have exactly one reply: no more, no fewer, no hole.
"""
from __future__ import annotations

import re
import signal
import socket
import threading
import time
from pathlib import Path

import orjson


FEATURES = str(Path(__file__).parent / "plugins" / "features")
CLIENTS = 8
# Every way a reply is written: inline (health), owed until a commit (state:set), an async
# handler's task (greet:slow), the slow path (an unknown name).
KINDS = [("system:health", {}), ("state:set", {"key": "k", "value": 1}),
         ("greet:slow", {"seconds": 0.001}), ("nobody:here", {})]
LINES_PER_WRITE = 64
# Requests a client may have sent but not seen answered: a deep pipeline, but bounded, so a
# loaded machine answers within the test's time (without it each loop iteration of the daemon
# reads tens of thousands of lines from the kernel's socket buffers).
WINDOW = 1024


class FloodingClient:
    """A raw connection that pipelines requests as fast as it can from one thread and reads
    replies from another, until the daemon closes the connection."""

    def __init__(self, socket_path: Path, number: int):
        self.number = number
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(str(socket_path))
        self.line_ends: list[int] = []  # byte offset just past each request line sent
        self.replies: list[dict] = []
        self.sent = 0
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._write, daemon=True),
                        threading.Thread(target=self._read, daemon=True)]

    def handshake(self) -> None:
        """One answered request before the next client connects: accept order = client order."""
        self._send_lines(1)
        while not self.replies:
            self._read_some()

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def _send_lines(self, count: int) -> None:
        chunk = bytearray()
        for _ in range(count):
            event, data = KINDS[len(self.line_ends) % len(KINDS)]
            chunk += orjson.dumps({"event": event, "data": data,
                                   "correlation_id": f"{self.number}-{len(self.line_ends)}"})
            chunk += b"\n"
            self.line_ends.append(self.sent + len(chunk))
        view = memoryview(chunk)
        while view:  # (a line only partly sent is never counted as read: see requests_read)
            written = self.sock.send(view)
            self.sent += written
            view = view[written:]

    def _write(self) -> None:
        try:
            while not self.stop.is_set():
                if len(self.line_ends) - len(self.replies) < WINDOW:
                    self._send_lines(LINES_PER_WRITE)
                else:
                    time.sleep(0.0005)
        except OSError:
            pass  # the daemon closed the connection (EPIPE, ECONNRESET)

    _buffer = b""

    def _read_some(self) -> bool:
        try:
            chunk = self.sock.recv(1 << 20)
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            return False
        self._buffer += chunk
        *lines, self._buffer = self._buffer.split(b"\n")
        self.replies += [orjson.loads(line) for line in lines]
        return True

    def _read(self) -> None:
        while self._read_some():
            pass

    def join(self, timeout: float) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout)
        self.sock.close()


def requests_read(client: FloodingClient, bytes_read: int) -> int:
    return sum(1 for end in client.line_ends if end <= bytes_read)


def closing_records(daemon) -> list[dict]:
    records = [orjson.loads(line) for line in
               (daemon.var_dir / "logs" / "daemon.log").read_bytes().splitlines()]
    closing = [r for r in records if r["event"] == "connection_closing"]
    # connection ids carry the accept order ("unix:7:pid123"); the clients connected in turn
    return sorted(closing, key=lambda r: int(re.search(r"\d+", r["connection"]).group()))


def test_sigterm_mid_flood_answers_every_line_read_exactly_once(daemon_factory):
    daemon = daemon_factory({"daemon": {"plugin_dirs": [FEATURES], "log_level": "DEBUG"}})
    clients = []
    for number in range(CLIENTS):
        client = FloodingClient(daemon.socket_path, number)
        client.handshake()
        clients.append(client)
    for client in clients:
        client.start()
    time.sleep(0.7)
    daemon.proc.send_signal(signal.SIGTERM)
    assert daemon.wait(30) == 0
    for client in clients:
        client.join(10)
    closing = closing_records(daemon)
    assert len(closing) == CLIENTS, closing
    problems = []
    for client, record in zip(clients, closing):
        read = requests_read(client, record["bytes_read"])
        answered = [r["correlation_id"] for r in client.replies if r["type"] == "reply"]
        expected = [f"{client.number}-{n}" for n in range(read)]
        if sorted(answered) != sorted(expected):
            missing = sorted(set(expected) - set(answered), key=lambda c: int(c.split("-")[1]))
            problems.append(f"client {client.number}: read {read}, answered {len(answered)}, "
                            f"{len(answered) - len(set(answered))} twice, missing "
                            f"{len(missing)} {missing[:5]}, unexpected "
                            f"{sorted(set(answered) - set(expected))[:5]}")
    total = sum(len(c.line_ends) for c in clients)
    assert not problems, f"of {total} requests sent:\n" + "\n".join(problems)
    assert total > 10_000  # a flood, not a trickle


def test_sigterm_right_after_start_exits_zero_every_time(daemon_factory):
    for attempt in range(6):
        daemon = daemon_factory(subdir=f"run{attempt}", wait=False)
        deadline = time.monotonic() + 30
        while not daemon.socket_path.exists() and time.monotonic() < deadline:
            time.sleep(0.005)
        # the socket is up: the completion plugin's litellm import is still under way
        time.sleep(0.05 * attempt)
        assert daemon.stop(signal.SIGTERM) == 0, daemon.read_output()[-3000:]


def test_a_thread_still_running_at_exit_neither_holds_up_nor_crashes_the_exit(daemon_factory):
    lingering = str(Path(__file__).parent / "plugins" / "lingering")
    daemon = daemon_factory({"daemon": {"plugin_dirs": [lingering]}})
    assert daemon.stop(signal.SIGTERM, timeout=15) == 0
    records = [orjson.loads(line) for line in
               (daemon.var_dir / "logs" / "daemon.log").read_bytes().splitlines()]
    exits = [r for r in records if r["event"] == "exiting_past_running_threads"]
    assert exits and "busy-plugin-thread" in exits[0]["threads"]
