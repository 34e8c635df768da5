"""The real daemon inside the test process: no subprocess, no daemon start per test paid twice.

`InProcessDaemon` starts what `ksi_daemon.daemon.Daemon` starts (the config loaded the same way,
the real PluginManager with the built-in plugins and any plugin dirs, each plugin's SQLite
files under a temporary var dir) in the running event loop, and serves the core's
`MemoryConnection`s: lines handed straight to the router, replies and pushes kept in memory.
An async test awaits it in its own loop:

    async with InProcessDaemon(tmp_path) as daemon:
        async with daemon.connect() as client:
            reply = await client.request("system:health")

`ThreadedDaemon` runs the same daemon on a loop in a background thread, for the (sync) tests
written against `conftest.DaemonProcess`: `client()` returns a `MemoryLineClient` with
`LineClient`'s methods (`send`, `send_raw`, `recv`, `recv_reply`, `request`), so a test moves
here by a marker (`pytest.mark.daemon("inprocess")`, see conftest.py), not by a new body. The
Unix transport is a plugin like the others and runs too: `socket_client()` (or ksi_client on
`socket_path`) talks to the same daemon over a real socket.

What it saves: a Python start and the plugins' imports per daemon, and litellm's import (seconds
of CPU), paid once per test process instead of by every daemon that calls a model.

What only a process can show (signals, exit codes, kill -9, what the process prints, its
environment) stays on `DaemonProcess`; so do the tests of the transport itself (socket modes,
peer credentials, oversized lines, back-pressure), which need the socket's own buffers.
"""
from __future__ import annotations

import asyncio
import logging
import os
import queue
import signal
import sys
import threading
import time
from pathlib import Path

import orjson

from conftest import DAEMON_STARTS, TEST_CONFIG, LineClient, LineSpeaker, merge_config

from ksi_daemon.core.memory_connection import MemoryConnection


class FramedConnection(MemoryConnection):
    """The core's MemoryConnection, fed bytes as a socket client writes them, each line it
    receives also handed to `deliver` (the client's queue).

    Framing as the Unix transport does it for lines under the size limit: split on newlines,
    blank lines ignored, a partial line kept until its newline arrives.
    """

    def __init__(self, router, deliver, **peer):
        self._partial, self.deliver = b"", deliver
        super().__init__(router, **peer)

    def feed(self, data: bytes) -> None:
        if self.closed:
            return
        *lines, self._partial = (self._partial + data).split(b"\n")
        for line in lines:
            if line and not line.isspace():
                self.send_line(line)

    def send(self, line: bytes) -> None:
        if not self.closed:
            super().send(line)
            self.deliver(line)


def _split_lines(chunk: bytes) -> list[bytes]:
    return [line for line in chunk.split(b"\n") if line]


class AsyncMemoryClient:
    """An async client on a MemoryConnection, in the daemon's own loop."""

    def __init__(self, router):
        self._lines: asyncio.Queue[bytes] = asyncio.Queue()
        self.connection = FramedConnection(router, self._deliver)

    def _deliver(self, chunk: bytes) -> None:
        for line in _split_lines(chunk):
            self._lines.put_nowait(line)

    def send_raw(self, payload: bytes) -> None:
        self.connection.feed(payload)

    def send(self, event: str, data: dict | None = None, **envelope) -> None:
        message = {"event": event, **envelope}
        if data is not None:
            message["data"] = data
        self.send_raw(orjson.dumps(message) + b"\n")

    async def recv(self, timeout: float = 10.0) -> dict:
        return orjson.loads(await asyncio.wait_for(self._lines.get(), timeout))

    async def recv_reply(self, timeout: float = 10.0) -> dict:
        while True:
            message = await self.recv(timeout)
            if message["type"] == "reply":
                return message

    async def request(self, event: str, data: dict | None = None, **envelope) -> dict:
        self.send(event, data, **envelope)
        return await self.recv_reply()

    def close(self) -> None:
        self.connection.close()

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        self.close()


class InProcessDaemon:
    """The daemon's plugins and router, started in the running event loop."""

    def __init__(self, workdir: Path, config: dict | None = None, args: list[str] | None = None):
        self.workdir = Path(workdir)
        self.args = list(args or [])  # command-line flags, read by the daemon's own parser
        self.var_dir = self.workdir / "var"
        self.socket_path = self.var_dir / "run" / "daemon.sock"
        self.config_path = self.workdir / "daemon.json"
        self.config_path.write_bytes(orjson.dumps(merge_config(TEST_CONFIG, config or {})))
        self.daemon = None

    @property
    def router(self):
        return self.daemon.router

    @property
    def plugins(self):
        return self.daemon.plugins

    async def start(self) -> "InProcessDaemon":
        from ksi_daemon.config import load_config
        from ksi_daemon.daemon import Daemon, prepare_run_dir
        from ksi_daemon.logging_setup import configure_logging
        from ksi_daemon.__main__ import parse_args
        cli = parse_args(["--config", str(self.config_path), *self.args])
        config, _warnings = load_config(cli.config, {
            "var_dir": cli.var_dir or str(self.var_dir), "socket_path": cli.socket_path,
            "log_level": cli.log_level}, environ={})
        if cli.plugin_dirs:  # as ksi_daemon.__main__ does: --plugin-dir adds to the list
            config["daemon"]["plugin_dirs"] += cli.plugin_dirs
        settings = config["daemon"]
        self.log_file = configure_logging(Path(settings["var_dir"]) / "logs",
                                          settings.get("log_level", "INFO"), console=False)
        self._log_handlers = list(logging.getLogger().handlers)
        prepare_run_dir(settings["socket_path"])
        _forget_earlier_daemons_model_providers()
        self.daemon = Daemon(config)
        self.daemon.plugins.load_all()
        await self.daemon.plugins.start_all()
        await self.daemon.plugins.ready_all()
        return self

    async def stop(self) -> None:
        """Daemon.run's shutdown: refuse new work, let plugins stop, drain, shut down."""
        daemon = self.daemon
        if daemon is None:
            return
        self.daemon = None
        daemon.shutdown_deadline = time.monotonic() + daemon.shutdown_timeout
        daemon.router.accepting = False
        await daemon.plugins.stopping_all()
        await daemon.router.drain(max(0.0, daemon.shutdown_deadline - time.monotonic()))
        await daemon.plugins.shutdown_all()
        root = logging.getLogger()
        for handler in self._log_handlers:  # this daemon's log file, closed with it
            if handler in root.handlers:
                root.removeHandler(handler)
                handler.close()

    def read_log(self) -> str:
        return self.log_file.read_text(errors="replace")

    def connect(self) -> AsyncMemoryClient:
        """A client reading its lines in order (`recv`, `request`), as over a socket."""
        return AsyncMemoryClient(self.router)

    def memory_connection(self, **peer) -> MemoryConnection:
        """The core's MemoryConnection (replies by correlation id: `ask`, `reply_to`)."""
        return MemoryConnection(self.router, **peer)

    async def __aenter__(self):
        return await self.start()

    async def __aexit__(self, *exc):
        await self.stop()


def _forget_earlier_daemons_model_providers() -> None:
    """litellm stays imported between daemons of one process, and its provider map with it:
    drop the providers an earlier daemon registered (the claude-cli one holds that daemon's
    runner and config), so this daemon's completion plugin registers its own."""
    if "litellm" not in sys.modules:
        return
    # An earlier daemon's warm-up thread may still be importing it: `import` waits for that.
    import litellm
    from ksi_daemon.plugins.completion import claude_cli, offline_model
    ours = {offline_model.PROVIDER, claude_cli.PROVIDER}
    litellm.custom_provider_map[:] = [entry for entry in litellm.custom_provider_map
                                      if entry["provider"] not in ours]


class MemoryLineClient(LineSpeaker):
    """`conftest.LineClient`'s interface on a MemoryConnection of a daemon in another thread."""

    def __init__(self, owner: "ThreadedDaemon", timeout: float = 10.0):
        self.owner, self.timeout = owner, timeout
        self._lines: queue.SimpleQueue[bytes] = queue.SimpleQueue()
        self.connection = owner.call(self._open)

    def _open(self) -> FramedConnection:
        return FramedConnection(self.owner.router, self._deliver)

    def _deliver(self, chunk: bytes) -> None:
        for line in _split_lines(chunk):
            self._lines.put(line)

    def settimeout(self, timeout: float) -> None:
        self.timeout = timeout

    def send_raw(self, payload: bytes) -> None:
        self.owner.loop.call_soon_threadsafe(self.connection.feed, payload)

    def recv(self) -> dict:
        try:
            return orjson.loads(self._lines.get(timeout=self.timeout))
        except queue.Empty:
            raise TimeoutError(f"nothing received in {self.timeout} s") from None

    def close(self) -> None:
        if not self.owner.loop.is_closed():
            self.owner.loop.call_soon_threadsafe(self.connection.close)


class _ThisProcess:
    """Stands in for `DaemonProcess.proc` where a test asks the daemon's pid."""

    def __init__(self):
        self.pid = os.getpid()


# litellm caches its HTTP clients per event loop, by id(loop): a closed loop kept here can never
# be freed, so no later daemon's loop gets its id and with it a client bound to a dead loop.
_FINISHED_LOOPS: list[asyncio.AbstractEventLoop] = []


class ThreadedDaemon:
    """An InProcessDaemon on its own event loop in a background thread, for sync tests."""

    def __init__(self, workdir: Path, config: dict | None = None, args: list[str] | None = None):
        self.workdir = Path(workdir)
        self.inner = InProcessDaemon(self.workdir, config, args)
        self.var_dir, self.socket_path = self.inner.var_dir, self.inner.socket_path
        self.proc = _ThisProcess()
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def router(self):
        return self.inner.router

    @property
    def plugins(self):
        return self.inner.plugins

    def start(self) -> "ThreadedDaemon":
        import uvloop
        self.loop = uvloop.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="ksi-inprocess",
                                        daemon=True)
        self._thread.start()
        DAEMON_STARTS["inprocess"] += 1
        self.run(self.inner.start(), timeout=30)
        return self

    def run(self, coroutine, timeout: float = 30.0):
        """Run a coroutine on the daemon's loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def call(self, function, *args):
        """Call a plain function on the daemon's loop and return its result."""
        async def call():
            return function(*args)
        return self.run(call())

    def client(self, timeout: float = 10.0) -> MemoryLineClient:
        return MemoryLineClient(self, timeout)

    def read_output(self) -> str:
        """What `DaemonProcess.read_output` gives: the daemon's log, here its log file (JSON
        lines). Logging is the process's: a daemon started later takes it over."""
        return self.inner.read_log()

    def socket_client(self, timeout: float = 10.0) -> LineClient:
        return LineClient(self.socket_path, timeout)

    def request(self, event: str, data: dict | None = None) -> dict:
        with self.client() as client:
            return client.request(event, data)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        """The daemon's graceful shutdown (what SIGTERM does); 0, the exit code it would give.
        `start()` again is a restart on the same var dir. A kill -9 needs a DaemonProcess."""
        if sig not in (signal.SIGTERM, signal.SIGINT):
            raise ValueError("an in-process daemon stops only gracefully; use DaemonProcess")
        if self.loop is None or self.loop.is_closed():
            return 0
        try:
            self.run(self.inner.stop(), timeout=timeout)
            self.run(self._cancel_leftovers(), timeout=5)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
            self.loop.close()
            _FINISHED_LOOPS.append(self.loop)
        return 0

    @staticmethod
    async def _cancel_leftovers() -> None:
        leftovers = asyncio.all_tasks() - {asyncio.current_task()}
        for task in leftovers:
            task.cancel()
        if leftovers:
            await asyncio.wait(leftovers, timeout=1.0)
