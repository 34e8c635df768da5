"""One MCP server, from the daemon's side: started when first needed, watched, restarted with
back-off, stopped on request. Through the official SDK (`mcp`): `stdio_client` or
`streamable_http_client` for the transport, `ClientSession` for the protocol.

A connection lives in its own task (`_hold`), because the SDK's transports are anyio context
managers that must be left in the task that entered them. Between the transport and the session
sits a pump that forwards every message and notes when the stream ends: that is how a server
that died (its stdout closed) is seen at once, not at the next call, so the next call restarts
it instead of being sent into a dead pipe.
"""
from __future__ import annotations

import asyncio
import contextlib
import importlib
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from ...protocol import HANDLER_ERROR, TIMEOUT, UNAVAILABLE, KSIError
from .mcp_config import McpSettings, ServerConfig, StdioServer

STOPPED, STARTING, RUNNING, DOWN = "stopped", "starting", "running", "down"
STOP_WAIT_S = 8.0  # the SDK's own stop: close stdin, 2 s, SIGTERM, 2 s, SIGKILL
_sdk: SimpleNamespace | None = None


def _import_sdk() -> SimpleNamespace:
    return SimpleNamespace(
        anyio=importlib.import_module("anyio"),
        types=importlib.import_module("mcp_types"),
        session=importlib.import_module("mcp.client.session"),
        stdio=importlib.import_module("mcp.client.stdio"),
        http=importlib.import_module("mcp.client.streamable_http"),
        errors=importlib.import_module("mcp.shared.exceptions"))


async def sdk() -> SimpleNamespace:
    """The SDK's modules, imported on first use in a thread (about a second of imports that a
    daemon whose agents use no MCP server never pays, and the event loop never waits for)."""
    global _sdk
    if _sdk is None:
        _sdk = await asyncio.to_thread(_import_sdk)
    return _sdk


class Backoff:
    """How long to wait before the next start: none after a clean death, then doubling with
    each start that failed or call that found the server dead, until a call succeeds."""

    def __init__(self, first_s: float, max_s: float):
        self.first_s, self.max_s = first_s, max_s
        self.strikes = 0
        self.not_before = 0.0

    def failed(self) -> None:
        self.strikes += 1
        self.not_before = time.monotonic() + min(self.max_s,
                                                 self.first_s * 2 ** (self.strikes - 1))

    def succeeded(self) -> None:
        self.strikes, self.not_before = 0, 0.0

    def wait_s(self) -> float:
        return max(0.0, self.not_before - time.monotonic())


class McpConnection:
    def __init__(self, name: str, config: ServerConfig, settings: McpSettings,
                 stderr_path: Path | None, log):
        self.name, self.config, self.settings = name, config, settings
        self.stderr_path, self.log = stderr_path, log
        self.state = STOPPED
        self.listed: list | None = None  # the server's tools (mcp Tool objects), last listing
        self.starts = 0
        self.last_error: str | None = None
        self.backoff = Backoff(settings.backoff_s, settings.backoff_max_s)
        self._session = None
        self._owner: asyncio.Task | None = None
        self._starting: asyncio.Future | None = None
        self._wake: asyncio.Event | None = None  # set when the stream ends or stop() is asked
        self._stopping = False

    def status(self) -> dict:
        return {"server": self.name, "transport": self.config.transport, "state": self.state,
                "starts": self.starts, "last_error": self.last_error,
                "tools": None if self.listed is None else len(self.listed),
                "retry_in_s": round(self.backoff.wait_s(), 3) if self.state == DOWN else None}

    # ---- starting ----------------------------------------------------------------------------

    async def session(self):
        """The running session, the server started first when it is not running; KSIError
        `unavailable` when it cannot be (within its back-off, or it did not start)."""
        if self.state == RUNNING:
            return self._session
        if self._stopping:
            raise KSIError(UNAVAILABLE, f"MCP server {self.name} is stopping")
        if self._starting is None:
            wait = self.backoff.wait_s()
            if wait > 0:
                raise KSIError(UNAVAILABLE, f"MCP server {self.name} is down "
                               f"({self.last_error}); the next start is tried in {wait:.1f} s")
            self._starting = asyncio.ensure_future(self._start())
        # Shielded: a caller that gives up (its timeout) leaves the start to the next caller.
        return await asyncio.shield(self._starting)

    async def _start(self):
        self.state = STARTING
        loop = asyncio.get_running_loop()
        ready: asyncio.Future = loop.create_future()
        self._wake = asyncio.Event()
        self._owner = loop.create_task(self._hold(ready, self._wake),
                                       name=f"mcp-server-{self.name}")
        try:
            async with asyncio.timeout(self.settings.start_timeout_s):
                self._session, self.listed = await asyncio.shield(ready)
            if self._wake.is_set():  # it exited right after listing its tools
                raise ConnectionError("the server exited just after it started")
        except BaseException as exc:
            self._owner.cancel()  # the SDK still stops the process it started (shielded)
            self.state, self.last_error = DOWN, _why_not_started(exc, self.settings)
            self.backoff.failed()
            self.log.warning("mcp_server_not_started", server=self.name, error=self.last_error)
            if isinstance(exc, asyncio.CancelledError):
                raise
            raise KSIError(UNAVAILABLE, f"MCP server {self.name} did not start: "
                                        f"{self.last_error}") from None
        finally:
            self._starting = None
        self.state, self.starts = RUNNING, self.starts + 1
        self.log.info("mcp_server_started", server=self.name, tools=len(self.listed),
                      starts=self.starts)
        return self._session

    async def _hold(self, ready: asyncio.Future, wake: asyncio.Event) -> None:
        """The connection's whole life, in this one task."""
        stderr = None
        try:
            mcp = await sdk()
            if isinstance(self.config, StdioServer):
                stderr = _open_stderr(self.stderr_path)
                transport = mcp.stdio.stdio_client(mcp.stdio.StdioServerParameters(
                    command=self.config.command, args=list(self.config.args),
                    env=self.config.env or None, cwd=self.config.cwd), errlog=stderr)
            else:
                transport = mcp.http.streamable_http_client(self.config.url)
            async with transport as (read, write):
                forward, received = mcp.anyio.create_memory_object_stream(0)
                async with mcp.anyio.create_task_group() as pumps:
                    pumps.start_soon(self._pump, mcp.anyio, read, forward, wake)
                    async with mcp.session.ClientSession(
                            received, write, client_info=mcp.types.Implementation(
                                name="ksi-daemon", version="0.1.0")) as session:
                        await session.initialize()
                        ready.set_result((session, await _all_tools(session)))
                        await wake.wait()
                    pumps.cancel_scope.cancel()
        except Exception as exc:  # noqa: BLE001 - a failed start or a broken transport
            if not ready.done():
                ready.set_exception(exc)
            else:
                self.log.warning("mcp_server_connection_failed", server=self.name,
                                 error=repr(exc))
        finally:
            if stderr is not None:
                stderr.close()
            if self._owner is asyncio.current_task():
                self._session = None
                if self.state == RUNNING:
                    self.state = DOWN

    async def _pump(self, anyio, source, sink, wake: asyncio.Event) -> None:
        try:
            async with sink:
                async for message in source:
                    await sink.send(message)
        except (anyio.ClosedResourceError, anyio.BrokenResourceError, anyio.EndOfStream):
            pass
        finally:
            if not wake.is_set() and not self._stopping:
                # Its stream ended while nobody asked it to stop: the server is gone.
                self.state, self.last_error = DOWN, "the server exited (its output ended)"
                self.log.warning("mcp_server_exited", server=self.name)
            wake.set()

    # ---- calling -----------------------------------------------------------------------------

    async def call(self, tool: str, arguments: dict) -> Any:
        """The tool's result as JSON; KSIError for a server that is down or a tool that failed."""
        session = await self.session()
        mcp = await sdk()
        try:
            result = await session.call_tool(tool, arguments)
        except mcp.errors.MCPError as exc:
            if exc.code == mcp.types.CONNECTION_CLOSED:
                self.backoff.failed()  # it died under this call: restart, but not in a loop
                self.state, self.last_error = DOWN, "the server exited during a call"
                raise KSIError(UNAVAILABLE, f"MCP server {self.name} stopped during the call "
                               "(the call was not repeated; the server is restarted at the "
                               "next call)") from None
            if exc.code == mcp.types.REQUEST_TIMEOUT:
                raise KSIError(TIMEOUT, f"MCP server {self.name}: {exc.error.message}") from None
            raise KSIError(HANDLER_ERROR, f"MCP server {self.name} answered an error "
                                          f"{exc.code}: {exc.error.message}") from None
        except (OSError, mcp.anyio.BrokenResourceError, mcp.anyio.ClosedResourceError) as exc:
            self.backoff.failed()
            self.state, self.last_error = DOWN, f"the connection broke: {exc!r}"
            self._drop()
            raise KSIError(UNAVAILABLE, f"MCP server {self.name}: {self.last_error}") from None
        self.backoff.succeeded()
        return result_of(result, f"{self.name}__{tool}")

    # ---- stopping ----------------------------------------------------------------------------

    def _drop(self) -> None:
        """Let the connection's task end (it stops the server it started)."""
        if self._wake is not None:
            self._wake.set()

    async def stop(self) -> None:
        """Stop the server and wait for its process to be gone (bounded)."""
        self._stopping = True
        owner = self._owner
        self._drop()
        if self._starting is not None:
            self._starting.cancel()
        if owner is not None and not owner.done():
            _done, pending = await asyncio.wait({owner}, timeout=STOP_WAIT_S)
            if pending:
                owner.cancel()
                await asyncio.wait({owner}, timeout=1.0)
        self.state, self._session, self._owner = STOPPED, None, None
        self._stopping = False


async def _all_tools(session) -> list:
    """Every tool the server lists, through its pages."""
    mcp = await sdk()
    tools, cursor = [], None
    while True:
        params = mcp.types.PaginatedRequestParams(cursor=cursor) if cursor else None
        page = await session.list_tools(params=params)
        tools.extend(page.tools)
        cursor = page.next_cursor
        if not cursor or len(tools) > 10_000:
            return tools


def result_of(result, name: str) -> Any:
    """An MCP tool result as the JSON the model reads: its structured content when it has
    some, else its content blocks; a result marked as an error is the tool's failure."""
    if result.is_error:
        text = " ".join(getattr(block, "text", "") for block in result.content).strip()
        raise KSIError(HANDLER_ERROR, f"{name} failed: {text or 'the MCP tool reported an error'}")
    if result.structured_content is not None:
        return result.structured_content
    return {"content": [block.model_dump(mode="json", by_alias=True, exclude_none=True)
                        for block in result.content]}


def _why_not_started(exc: BaseException, settings: McpSettings) -> str:
    if isinstance(exc, TimeoutError):
        return f"it did not answer the MCP handshake within {settings.start_timeout_s:g} s"
    if isinstance(exc, asyncio.CancelledError):
        return "its start was cancelled"
    # An exception group from the SDK's task groups: its first cause says what happened.
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return f"{type(exc).__name__}: {exc}"[:500]


def _open_stderr(path: Path | None):
    """Where a stdio server's stderr goes: its log file under the plugin's data directory."""
    if path is None:
        return open("/dev/null", "w")
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        return open(path, "a", encoding="utf-8")
    return open("/dev/null", "w")

