"""A threaded HTTP server on 127.0.0.1 that the tests' fake model APIs are built on."""
from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _Server(ThreadingHTTPServer):
    # socketserver's default backlog of 5 drops connections when 100 clients arrive at once,
    # and a dropped SYN costs a second or more before the client tries again.
    request_queue_size = 1024
    daemon_threads = True


class LocalHTTPServer:
    """Serves `handler` on a free loopback port; handlers reach this object as `server.owner`.

    `with Subclass() as server:` starts it in a thread and stops it on exit.
    """

    def __init__(self, handler: type[BaseHTTPRequestHandler]):
        self.requests: list[dict] = []
        self._lock = threading.Lock()
        self.httpd = _Server(("127.0.0.1", 0), handler)
        self.httpd.owner = self
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def start(self):
        threading.Thread(target=self.httpd.serve_forever, name=type(self).__name__,
                         daemon=True).start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def serve_until_killed(self, address: str) -> None:
        """`python tests/fake_*.py`: print where it listens, serve until the process ends."""
        with self:
            print(address, flush=True)
            threading.Event().wait()
