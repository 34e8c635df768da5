"""EventClient: one connection to the daemon, many requests in flight, pushes to whoever listens.

    async with EventClient() as client:                      # socket found as in socket_path.py
        health = await client.emit("system:health")          # the reply's data, or a KSIError
        await client.subscribe("agent:*", on_agent_event)    # handler: sync or async callable
        async for event in client.events("agent:*"):         # or pull pushes as an iterator
            print(event.event, event.data)

How it works: an asyncio.Protocol splits the incoming bytes into lines as they arrive (no reader
task, no per-line await). A reply completes the future of the request with the same
`correlation_id`, so replies may come back in any order. A push (`"type": "event"`) goes to every
subscription handler and every `events()` stream whose pattern matches. Requests written in the
same loop iteration leave in one write.

Every call has a deadline (default 30 s, per client or per call). When the connection drops,
every waiting call fails with KSIConnectionError and every `events()` stream raises it; the client
does not reconnect on its own (the daemon forgets a connection's subscriptions when it closes,
so a silent reconnect would silently lose them): make a new client.

The client belongs to the event loop that connected it. For scripts without asyncio,
`SyncEventClient` runs this same class on a private loop in a background thread.
"""
from __future__ import annotations

import asyncio
import fnmatch
import inspect
import itertools
import logging
import math
import re
import uuid
import weakref
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import orjson

from .errors import KSIConnectionError, KSITimeoutError, error_from_reply
from .socket_path import no_daemon_message, resolve_socket_path
from .unix_connect import BacklogStayedFull, connect_unix_socket

log = logging.getLogger("ksi_client")

DEFAULT_TIMEOUT_S = 30.0
MAX_LINE_BYTES = 16 * 1024 * 1024  # a reply longer than this ends the connection (see below)
EVENTS_QUEUE_SIZE = 10_000
MAX_CORRELATION_ID = 128
# Requests longer than this are remembered while they wait: the daemon answers a line over its
# limit without reading its correlation id, and that answer must still reach its caller.
LONG_LINE_BYTES = 64 * 1024
_LIMIT_IN_MESSAGE = re.compile(r"exceeds (\d+) bytes")
CLOSE_GRACE_S = 2.0
# How long a connect keeps trying while the daemon's listen backlog is full (a burst of clients
# connecting at once); the client's own timeout bounds it too.
BACKLOG_RETRY_S = 3.0
CLIENT_DEFAULT: Any = object()  # "use the client's own timeout"


@dataclass(frozen=True, slots=True)
class Event:
    """One push from the daemon. `correlation_id` is that of the request that caused it."""
    event: str
    data: Any
    correlation_id: str | None
    timestamp: float | None


@dataclass(frozen=True, slots=True, eq=False)
class Subscription:
    """What `subscribe()` returns; pass it to `unsubscribe()` to drop just this handler."""
    pattern: str
    handler: Callable[[Event], Any] | None


def compile_pattern(pattern: str) -> Callable[[str], bool]:
    """The daemon's matching rules: `*` is everything, `ns:*` a namespace, else fnmatch."""
    if pattern == "*":
        return lambda name: True
    if pattern.endswith(":*") and not any(c in pattern[:-2] for c in "*?["):
        prefix = pattern[:-1]
        return lambda name: name.startswith(prefix)
    return lambda name: fnmatch.fnmatchcase(name, pattern)


def _is_line_too_long(message: dict) -> bool:
    error = message.get("error")
    return isinstance(error, dict) and error.get("code") == "payload_too_large"


def checked_timeout(timeout: Any) -> float:
    if timeout is None:
        raise ValueError("every call has a timeout: pass a number of seconds (e.g. timeout=600 "
                         "for a long completion) instead of None")
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) \
            or math.isnan(timeout) or timeout <= 0:
        raise ValueError(f"timeout must be a positive number of seconds, not {timeout!r}")
    return float(timeout)


class _LineProtocol(asyncio.Protocol):
    """Bytes in, one line at a time out; remembers why the connection ended."""

    def __init__(self, on_line: Callable[[bytes], None], on_lost: Callable[[str | None], None],
                 max_line: int):
        self._on_line, self._on_lost, self._max_line = on_line, on_lost, max_line
        self._buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.lost_reason: str | None = None
        self._write_paused = False
        self._drained = asyncio.Event()
        self._drained.set()

    def connection_made(self, transport: asyncio.Transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self._buffer:
            self._buffer += data
            if b"\n" not in data:
                self._check_partial_line()
                return
            data = bytes(self._buffer)
            self._buffer.clear()
        lines = data.split(b"\n")
        rest = lines.pop()
        on_line, max_line = self._on_line, self._max_line
        for line in lines:
            if len(line) > max_line:
                self._refuse_long_line()
                return
            if line:
                on_line(line)
        if rest:
            self._buffer += rest
            self._check_partial_line()

    def _check_partial_line(self) -> None:
        if len(self._buffer) > self._max_line:
            self._refuse_long_line()

    def _refuse_long_line(self) -> None:
        # Without a bound a runaway line would hold all memory; the line's request cannot be
        # told apart from the others, so the honest outcome is to end the connection.
        self.lost_reason = f"the daemon sent a line longer than {self._max_line} bytes"
        self._buffer.clear()
        self.transport.abort()

    def pause_writing(self) -> None:
        self._write_paused = True
        self._drained.clear()

    def resume_writing(self) -> None:
        self._write_paused = False
        self._drained.set()

    async def drain(self) -> None:
        """Wait while the daemon is not reading our requests (the socket's buffers are full)."""
        if self._write_paused:
            await self._drained.wait()

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None and self.lost_reason is None:
            self.lost_reason = str(exc) or type(exc).__name__
        self._drained.set()
        self._on_lost(self.lost_reason)


class EventStream:
    """Pushes matching a pattern, as an async iterator; made by `EventClient.events()`.

    Memory is bounded: the stream keeps at most `max_queue` events that have not been read yet.
    When it is full, the oldest unread event is dropped to make room for the new one and
    `dropped` counts it (a warning is logged on the first drop). A live consumer cares more
    about what is happening now than about what happened a while ago; one that must not miss
    anything should read faster or ask `system:event_history` for what it missed.

    Iteration ends quietly when the stream or the client is closed, and raises
    KSIConnectionError when the connection to the daemon is lost (after the events already
    received have been read). A stream nobody refers to any more is forgotten by its client, so
    leaving an `async for` with `break` costs nothing; `async with client.events(...)` or
    `aclose()` stops it explicitly.
    """

    def __init__(self, pattern: str, correlation_id: str | None, max_queue: int,
                 on_close: Callable[[EventStream], None],
                 where: Callable[[Event], bool] | None = None):
        if max_queue < 1:
            raise ValueError("max_queue must be at least 1")
        self.pattern = pattern
        self.correlation_id = correlation_id
        self.where = where
        self.dropped = 0
        self._matches = compile_pattern(pattern)
        self._queue: deque[Event] = deque(maxlen=max_queue)
        self._arrived = asyncio.Event()
        self._ended = False
        self._end_error: tuple[str, Any] | None = None
        self._on_close = on_close

    def offer(self, event: Event) -> None:
        """Called by the client for every push; keeps the ones this stream wants."""
        if self._ended or not self._matches(event.event):
            return
        if self.correlation_id is not None and event.correlation_id != self.correlation_id:
            return
        if self.where is not None and not self._wanted(event):
            return
        if len(self._queue) == self._queue.maxlen:
            if self.dropped == 0:
                log.warning("events(%r) is full (%d unread): dropping the oldest events",
                            self.pattern, self._queue.maxlen)
            self.dropped += 1
        self._queue.append(event)
        self._arrived.set()

    def _wanted(self, event: Event) -> bool:
        try:
            return bool(self.where(event))
        except Exception:  # noqa: BLE001 - a broken filter must not stop the dispatch of replies
            log.exception("events(%r): the where= filter failed on %s", self.pattern, event.event)
            return False

    def end(self, error: KSIConnectionError | None = None) -> None:
        """No more events will come; `error` is raised to the reader once the queue is read."""
        if not self._ended:
            self._ended = True
            if error is not None:
                self._end_error = (error.message, error.details)
            self._arrived.set()

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> Event:
        while (event := self.take_nowait()) is None:
            self._arrived.clear()
            await self._arrived.wait()
        return event

    def take_nowait(self) -> Event | None:
        """The next unread event, or None if none is queued yet; once the stream has ended and
        is read, StopAsyncIteration (closed) or KSIConnectionError (connection lost)."""
        if self._queue:
            return self._queue.popleft()
        if self._ended:
            if self._end_error is not None:
                raise KSIConnectionError(*self._end_error)
            raise StopAsyncIteration
        return None

    async def get(self, timeout: float | None = None) -> Event:
        """The next event; KSITimeoutError if none arrives within `timeout` seconds (None:
        wait as long as it takes); KSIConnectionError once the stream has ended."""
        try:
            async with asyncio.timeout(timeout):
                return await self.__anext__()
        except StopAsyncIteration:
            raise KSIConnectionError(f"events({self.pattern!r}) was closed") from None
        except TimeoutError:
            raise KSITimeoutError(f"no {self.pattern!r} event within {timeout} s",
                                  {"pattern": self.pattern, "timeout_s": timeout}) from None

    async def aclose(self) -> None:
        self.end()
        self._on_close(self)

    async def __aenter__(self) -> EventStream:
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.aclose()


class EventClient:
    """An asyncio client of the KSI daemon over its Unix socket (see the module docstring).

    socket_path: the daemon's socket; None finds it from KSI_SOCKET_PATH, KSI_VAR_DIR or the
        project's var/run/daemon.sock (find_socket_path, socket_path.py).
    timeout: seconds each call (and connecting) may take unless the call says otherwise.
    max_line_bytes: the longest line accepted from the daemon; a longer one ends the connection.
    """

    def __init__(self, socket_path: str | Path | None = None, *,
                 timeout: float = DEFAULT_TIMEOUT_S, max_line_bytes: int = MAX_LINE_BYTES):
        self.socket_path = resolve_socket_path(socket_path)
        self.timeout = checked_timeout(timeout)
        self._max_line = max_line_bytes
        self._id_prefix = uuid.uuid4().hex[:12]
        self._ids = itertools.count(1)
        self._state = "new"  # new -> open -> lost | closed
        self._connecting = asyncio.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._protocol: _LineProtocol | None = None
        self._disconnected: asyncio.Future | None = None
        self._lost_message = ""
        self._refusal: str | None = None  # an error the daemon sent unasked, e.g. `forbidden`
        self._pending: dict[str, asyncio.Future] = {}
        self._long_lines: dict[str, int] = {}  # correlation id -> line length, in send order
        self._outbox: list[bytes] = []
        self._subscriptions: dict[str, list[Subscription]] = {}
        self._matchers: dict[str, Callable[[str], bool]] = {}
        self._streams: weakref.WeakSet[EventStream] = weakref.WeakSet()
        self._handler_tasks: set[asyncio.Task] = set()

    # ---- connecting and closing -------------------------------------------------------------

    async def __aenter__(self) -> EventClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.close()

    @property
    def connected(self) -> bool:
        return self._state == "open"

    async def connect(self) -> None:
        """Open the connection (done for you by `async with` or the first call)."""
        async with self._connecting:
            if self._state == "open":
                return
            if self._state != "new":
                raise self._unusable_error()
            loop = asyncio.get_running_loop()
            path = str(self.socket_path)
            try:
                async with asyncio.timeout(self.timeout):
                    sock = await connect_unix_socket(path, min(BACKLOG_RETRY_S, self.timeout))
                    _, protocol = await loop.create_unix_connection(
                        lambda: _LineProtocol(self._on_line, self._on_lost, self._max_line),
                        sock=sock)
            except BacklogStayedFull as exc:
                raise KSIConnectionError(
                    f"the daemon at {path} is not taking new connections: {exc} (more clients "
                    "are connecting at once than daemon.listen_backlog holds)",
                    {"socket_path": path}) from None
            except (FileNotFoundError, ConnectionRefusedError) as exc:
                raise KSIConnectionError(no_daemon_message(self.socket_path, exc.strerror),
                                         {"socket_path": path}) from None
            except PermissionError:
                raise KSIConnectionError(
                    f"permission denied on {path}: the daemon's socket belongs to another user",
                    {"socket_path": path}) from None
            except TimeoutError:
                raise KSIConnectionError(f"the daemon at {path} did not accept a connection "
                                         f"within {self.timeout} s", {"socket_path": path}) \
                    from None
            except OSError as exc:
                raise KSIConnectionError(f"cannot connect to {path}: {exc}",
                                         {"socket_path": path}) from None
            self._loop, self._protocol = loop, protocol
            self._disconnected = loop.create_future()
            self._state = "open"

    async def close(self) -> None:
        """Close the connection. Calls still waiting fail with KSIConnectionError; `events()`
        streams end; async subscription handlers still running are cancelled."""
        if self._state == "closed":
            return
        was_open = self._state == "open"
        self._state = "closed"
        for task in list(self._handler_tasks):
            task.cancel()
        if was_open:
            self._flush()
            self._protocol.transport.close()  # sends what is buffered, then closes
            try:
                async with asyncio.timeout(CLOSE_GRACE_S):
                    await asyncio.shield(self._disconnected)
            except TimeoutError:
                self._protocol.transport.abort()
        else:
            self._end_everything(None)

    def _unusable_error(self) -> KSIConnectionError:
        if self._state == "lost":
            return KSIConnectionError(self._lost_message, {"socket_path": str(self.socket_path)})
        return KSIConnectionError("this EventClient is closed; create a new one",
                                  {"socket_path": str(self.socket_path)})

    def _on_lost(self, reason: str | None) -> None:
        if self._state == "closed":
            error = None
        else:
            self._state = "lost"
            because = self._refusal or reason
            self._lost_message = (
                f"the connection to the KSI daemon at {self.socket_path} was lost"
                + (f" ({because})" if because else "")
                + "; calls that were waiting may or may not have been carried out")
            error = self._unusable_error()
        self._end_everything(error)
        if self._disconnected is not None and not self._disconnected.done():
            self._disconnected.set_result(None)

    def _end_everything(self, error: KSIConnectionError | None) -> None:
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                # A fresh exception per caller: one shared instance would collect every
                # caller's traceback.
                future.set_exception(error.__class__(error.message, error.details)
                                     if error is not None else self._unusable_error())
        for stream in list(self._streams):
            stream.end(error)

    # ---- requests ---------------------------------------------------------------------------

    async def emit(self, event: str, data: dict | None = None, *, timeout: Any = CLIENT_DEFAULT,
                   correlation_id: str | None = None) -> Any:
        """Send `event` and return the data of its reply, or raise the reply's error.

        timeout: seconds to wait for the reply (default: the client's `timeout`); past it,
            KSITimeoutError. The daemon may still carry the request out; its late reply is
            ignored.
        correlation_id: the request's id (default: a fresh one). Choose it yourself to follow
            the pushes a request causes, e.g. `events("completion:*", correlation_id=...)`.
        """
        timeout = self.timeout if timeout is CLIENT_DEFAULT else checked_timeout(timeout)
        if self._state != "open":
            await self.connect()
        cid = self._new_correlation_id() if correlation_id is None \
            else self._checked_correlation_id(correlation_id)
        line = orjson.dumps({"event": event, "data": {} if data is None else data,
                             "correlation_id": cid}, option=orjson.OPT_APPEND_NEWLINE)
        future = self._loop.create_future()
        self._pending[cid] = future
        if len(line) > LONG_LINE_BYTES:
            self._long_lines[cid] = len(line)
        self._send(line)
        try:
            async with asyncio.timeout(timeout):
                await self._protocol.drain()
                reply = await future
        except TimeoutError:
            raise KSITimeoutError(f"no reply to {event} within {timeout} s",
                                  {"event": event, "correlation_id": cid, "timeout_s": timeout,
                                   "side": "client"}) from None
        finally:
            if self._pending.get(cid) is future:
                del self._pending[cid]
            if self._long_lines:
                self._long_lines.pop(cid, None)
            if not future.done():
                future.cancel()
        if "error" in reply:
            raise error_from_reply(reply["error"])
        return reply.get("data")

    def _new_correlation_id(self) -> str:
        return f"{self._id_prefix}-{next(self._ids)}"

    def _checked_correlation_id(self, cid: Any) -> str:
        if not isinstance(cid, str) or not 0 < len(cid) <= MAX_CORRELATION_ID:
            raise ValueError("correlation_id must be a non-empty string of at most "
                             f"{MAX_CORRELATION_ID} characters")
        if cid in self._pending:
            raise ValueError(f"a request with correlation_id {cid!r} is still waiting")
        return cid

    def _send(self, line: bytes) -> None:
        # Lines written in one loop iteration leave in one write: 500 concurrent emits cost one
        # system call, not 500.
        if not self._outbox:
            self._loop.call_soon(self._flush)
        self._outbox.append(line)

    def _flush(self) -> None:
        if not self._outbox:
            return
        lines, self._outbox = self._outbox, []
        transport = self._protocol.transport
        if not transport.is_closing():
            transport.write(b"".join(lines))

    # ---- what arrives -----------------------------------------------------------------------

    def _on_line(self, line: bytes) -> None:
        try:
            message = orjson.loads(line)
        except orjson.JSONDecodeError:
            log.warning("ignoring a line from the daemon that is not JSON: %.200r", line)
            return
        if type(message) is not dict:
            return
        if message.get("type") == "event":
            self._dispatch(message)
            return
        cid = message.get("correlation_id")
        future = self._pending.pop(cid, None) if type(cid) is str else None
        if future is not None:
            if not future.done():
                future.set_result(message)
        elif self._long_lines and _is_line_too_long(message):
            self._answer_the_discarded_line(message)
        elif isinstance(message.get("error"), dict):
            # An error nobody asked for comes before the daemon hangs up on us (`forbidden`);
            # keep it, it is the reason the connection-lost error will give.
            error = message["error"]
            self._refusal = f"{error.get('code')}: {error.get('message')}"

    def _answer_the_discarded_line(self, message: dict) -> None:
        # The daemon reads lines in order and discards a long one whole: the answer belongs to
        # the oldest waiting request longer than the limit it names.
        found = _LIMIT_IN_MESSAGE.search(str(message["error"].get("message")))
        limit = int(found[1]) if found else LONG_LINE_BYTES
        for cid, length in list(self._long_lines.items()):
            if length > limit:
                del self._long_lines[cid]
                future = self._pending.pop(cid, None)
                if future is not None and not future.done():
                    future.set_result(message)
                return

    def _dispatch(self, message: dict) -> None:
        name = message.get("event")
        if type(name) is not str:
            return
        event = Event(name, message.get("data"), message.get("correlation_id"),
                      message.get("timestamp"))
        if self._subscriptions:
            for pattern, subscriptions in list(self._subscriptions.items()):
                if self._matchers[pattern](name):
                    for subscription in subscriptions:
                        if subscription.handler is not None:
                            self._call_handler(subscription.handler, event)
        for stream in list(self._streams):
            stream.offer(event)

    def _call_handler(self, handler: Callable, event: Event) -> None:
        try:
            result = handler(event)
        except Exception:  # noqa: BLE001 - one bad handler must not stop the others
            log.exception("subscription handler %r failed on %s", handler, event.event)
            return
        if inspect.isawaitable(result):
            # Async handlers run as tasks so a slow one never holds up replies.
            task = asyncio.ensure_future(result)
            self._handler_tasks.add(task)
            task.add_done_callback(self._handler_finished)

    def _handler_finished(self, task: asyncio.Task) -> None:
        self._handler_tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("async subscription handler failed", exc_info=task.exception())

    # ---- subscriptions and streams ----------------------------------------------------------

    async def subscribe(self, pattern: str, handler: Callable[[Event], Any] | None = None, *,
                        timeout: Any = CLIENT_DEFAULT) -> Subscription:
        """Ask the daemon for pushes of events matching `pattern` (`*`, `ns:*`, fnmatch).

        `handler(event)` is called for each matching push, sync or async (async handlers run
        as tasks and may overlap). Without a handler, read the pushes with `events(pattern)`.
        """
        if not isinstance(pattern, str) or not pattern:
            raise ValueError("pattern must be a non-empty string such as '*' or 'agent:*'")
        if handler is not None and not callable(handler):
            raise TypeError(f"handler must be callable, not {type(handler).__name__}")
        subscription = Subscription(pattern, handler)
        # Registered before asking: a push may arrive in the same read as the reply.
        self._matchers.setdefault(pattern, compile_pattern(pattern))
        self._subscriptions.setdefault(pattern, []).append(subscription)
        try:
            await self.emit("system:subscribe", {"patterns": [pattern]}, timeout=timeout)
        except BaseException:
            self._forget(subscription)
            raise
        return subscription

    async def unsubscribe(self, target: str | Subscription | None = None, *,
                          timeout: Any = CLIENT_DEFAULT) -> list[str]:
        """Drop one Subscription, every subscription of a pattern, or (None) all of them.

        The daemon stops sending a pattern once no subscription of this client uses it.
        Returns the patterns still active on the daemon for this connection.
        """
        if target is None:
            self._subscriptions.clear()
            self._matchers.clear()
            data: dict = {}
        else:
            if isinstance(target, Subscription):
                self._forget(target)
                pattern = target.pattern
            else:
                pattern = target
                self._subscriptions.pop(pattern, None)
                self._matchers.pop(pattern, None)
            if pattern in self._subscriptions:
                return list(self._subscriptions)
            data = {"patterns": [pattern]}
        reply = await self.emit("system:unsubscribe", data, timeout=timeout)
        return reply["patterns"]

    def _forget(self, subscription: Subscription) -> None:
        subscriptions = self._subscriptions.get(subscription.pattern, [])
        if subscription in subscriptions:
            subscriptions.remove(subscription)
        if not subscriptions:
            self._subscriptions.pop(subscription.pattern, None)
            self._matchers.pop(subscription.pattern, None)

    def events(self, pattern: str = "*", *, correlation_id: str | None = None,
               max_queue: int = EVENTS_QUEUE_SIZE,
               where: Callable[[Event], bool] | None = None) -> EventStream:
        """Pushes arriving on this connection that match `pattern`, as an async iterator.

        This does not ask the daemon for anything: pushes caused by this client's own requests
        (e.g. `completion:chunk` after `completion:async`) arrive anyway, while events caused by
        others arrive only for patterns passed to `subscribe()`. `correlation_id` keeps only
        the pushes caused by that request; `where(event)`, when given, keeps only the events
        it returns true for. See EventStream for the bounded queue.
        """
        if self._state in ("lost", "closed"):
            raise self._unusable_error()
        stream = EventStream(pattern, correlation_id, max_queue, self._streams.discard, where)
        self._streams.add(stream)
        return stream
