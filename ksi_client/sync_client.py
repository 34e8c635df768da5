"""SyncEventClient and SyncClient: EventClient and AsyncClient for scripts without asyncio.

    with SyncEventClient() as client:
        print(client.emit("system:health")["status"])
        client.subscribe("agent:*")
        for event in client.events("agent:*"):
            print(event.event, event.data)

    with SyncClient() as client:                       # every AsyncClient helper, blocking
        print(client.create_completion("Explain quantum computing").text)
        for delta in client.stream_completion("And briefly?"):
            print(delta, end="")

There is one implementation: each class owns a private event loop running in a background
thread and hands every call to the same async client there, waiting for its result. SyncClient's
methods are generated from AsyncClient's helpers: a coroutine's result is returned, an async
generator becomes a plain generator, an EventStream a SyncEventStream. Nothing about the
protocol lives in this file.

Subscription handlers run on that background thread. A handler that calls back into the same
SyncEventClient would wait for itself, so that raises RuntimeError; hand the work to your own
thread or queue instead.
"""
from __future__ import annotations

import asyncio
import functools
import inspect
import threading
from collections.abc import AsyncIterator, Coroutine, Iterator
from pathlib import Path
from typing import Any, Callable, TypeVar

from .async_client import AsyncClient, helper_names
from .completion import CompletionResponse
from .errors import KSIConnectionError
from .event_client import (CLIENT_DEFAULT, DEFAULT_TIMEOUT_S, EVENTS_QUEUE_SIZE, MAX_LINE_BYTES,
                           Event, EventClient, EventStream, Subscription)

T = TypeVar("T")
THREAD_STOP_GRACE_S = 5.0


class _LoopThread:
    """An event loop running forever in a daemon thread, and a way to run coroutines on it."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, name="ksi-client-loop", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
        finally:
            leftovers = asyncio.all_tasks(self.loop)
            for task in leftovers:
                task.cancel()
            if leftovers:
                self.loop.run_until_complete(asyncio.gather(*leftovers, return_exceptions=True))
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())

    def refuse_own_thread(self) -> None:
        if threading.get_ident() == self.thread.ident:
            raise RuntimeError("a SyncEventClient cannot be called from its own subscription "
                               "handlers (they run on its thread); hand the work to another "
                               "thread or queue")

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        try:
            self.refuse_own_thread()
        except RuntimeError:
            coro.close()
            raise
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result()
        except BaseException:
            future.cancel()  # e.g. Ctrl-C while waiting: do not leave the call running
            raise

    def stop(self) -> None:
        if self.thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(THREAD_STOP_GRACE_S)
        if not self.thread.is_alive() and not self.loop.is_closed():
            self.loop.close()


class SyncEventClient:
    """Blocking face of EventClient; the arguments and errors are the same."""
    _async_class: type[EventClient] = EventClient

    def __init__(self, socket_path: str | Path | None = None, *,
                 timeout: float = DEFAULT_TIMEOUT_S, max_line_bytes: int = MAX_LINE_BYTES):
        self._client = self._async_class(socket_path, timeout=timeout,
                                         max_line_bytes=max_line_bytes)
        self._runner = _LoopThread()
        self._closed = False

    @property
    def socket_path(self) -> Path:
        return self._client.socket_path

    @property
    def connected(self) -> bool:
        return self._client.connected

    @property
    def closed(self) -> bool:
        return self._closed

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._closed:
            coro.close()
            raise KSIConnectionError("this SyncEventClient is closed; create a new one")
        return self._runner.run(coro)

    def connect(self) -> None:
        self._run(self._client.connect())

    def emit(self, event: str, data: dict | None = None, *, timeout: Any = CLIENT_DEFAULT,
             correlation_id: str | None = None) -> Any:
        """See EventClient.emit: the reply's data, or the reply's error raised."""
        return self._run(self._client.emit(event, data, timeout=timeout,
                                           correlation_id=correlation_id))

    def subscribe(self, pattern: str, handler: Callable[[Event], Any] | None = None, *,
                  timeout: Any = CLIENT_DEFAULT) -> Subscription:
        """See EventClient.subscribe; `handler` runs on the client's background thread."""
        return self._run(self._client.subscribe(pattern, handler, timeout=timeout))

    def unsubscribe(self, target: str | Subscription | None = None, *,
                    timeout: Any = CLIENT_DEFAULT) -> list[str]:
        return self._run(self._client.unsubscribe(target, timeout=timeout))

    def events(self, pattern: str = "*", *, correlation_id: str | None = None,
               max_queue: int = EVENTS_QUEUE_SIZE,
               where: Callable[[Event], bool] | None = None) -> SyncEventStream:
        """See EventClient.events; a plain iterator that blocks until the next push.
        `where` runs on the client's background thread."""
        async def open_stream() -> EventStream:
            return self._client.events(pattern, correlation_id=correlation_id,
                                       max_queue=max_queue, where=where)
        return SyncEventStream(self._run(open_stream()), self)

    def close(self) -> None:
        if self._closed:
            return
        self._runner.refuse_own_thread()
        try:
            self._runner.run(self._client.close())
        finally:
            self._closed = True
            self._runner.stop()

    def __enter__(self) -> SyncEventClient:
        try:
            self.connect()
        except BaseException:
            self.close()  # `with` will not call __exit__: stop the thread here
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


class SyncClient(SyncEventClient):
    """Blocking face of AsyncClient: the same helpers, arguments, results and errors.

    `stream_completion()` returns a generator of deltas: leaving it early (break, an exception,
    Ctrl-C) cancels the completion in the daemon, as in AsyncClient.
    """
    _async_class = AsyncClient

    @property
    def last_response(self) -> CompletionResponse | None:
        """The result of the last stream_completion() that ran to its end."""
        return self._client.last_response

    def _call_helper(self, name: str, args: tuple, kwargs: dict) -> Any:
        method = getattr(self._client, name)
        if inspect.isasyncgenfunction(method):
            if self._closed:
                raise KSIConnectionError("this SyncClient is closed; create a new one")
            return self._iterate(method(*args, **kwargs))
        result = self._run(method(*args, **kwargs))
        if isinstance(result, EventStream):
            return SyncEventStream(result, self)
        return result

    def _iterate(self, items: AsyncIterator[T]) -> Iterator[T]:
        steps = _Steps(items)
        finished = False
        try:
            while True:
                item = self._run(steps.next())
                if item is _END:
                    finished = True
                    return
                yield item
        finally:
            if not finished and not self._closed:
                # Not items.aclose() straight away: a Ctrl-C can land after a step was handed
                # to the loop and before its future could be cancelled (or as the step ends
                # with an item), so the step may still run and then leave the generator
                # suspended, never closed, and the stream it serves (a completion) going on.
                self._run(steps.close())


class _Steps:
    """Steps of one async generator taken on the client's loop, and its close once no step
    is running any more."""

    def __init__(self, items: AsyncIterator[T]):
        self.items = items
        self.running: asyncio.Task | None = None

    async def next(self):
        self.running = asyncio.current_task()
        return await _next_or_end(self.items)

    async def close(self) -> None:
        # Steps and this close run on the one loop in the order they were handed to it, so a
        # step handed over before the close has started: it is `running`.
        step = self.running
        if step is not None and not step.done():
            step.cancel()  # its clean-up (cancelling the completion) runs inside the generator
            await asyncio.wait([step])
        await self.items.aclose()  # a generator that ended already: nothing to do


def _blocking(helper: Callable) -> Callable:
    @functools.wraps(helper)
    def call(self: SyncClient, *args, **kwargs):
        return self._call_helper(helper.__name__, args, kwargs)
    return call


for _name in helper_names():
    setattr(SyncClient, _name, _blocking(getattr(AsyncClient, _name)))


class SyncEventStream:
    """Blocking face of EventStream: iterate it, or `get(timeout)` one event at a time."""

    def __init__(self, stream: EventStream, client: SyncEventClient):
        self._stream, self._client = stream, client

    @property
    def pattern(self) -> str:
        return self._stream.pattern

    @property
    def dropped(self) -> int:
        return self._stream.dropped

    def __iter__(self) -> SyncEventStream:
        return self

    def __next__(self) -> Event:
        if self._client.closed:
            # The loop is gone, and so is any chance of more events: hand out what was queued.
            try:
                event = self._stream.take_nowait()
            except StopAsyncIteration:
                event = None
        else:
            event = self._client._run(_next_or_end(self._stream))
        if event is None or event is _END:
            raise StopIteration
        return event

    def get(self, timeout: float | None = None) -> Event:
        """The next event; KSITimeoutError if none within `timeout` s (None: no limit);
        KSIConnectionError once the stream has ended."""
        return self._client._run(self._stream.get(timeout))

    def close(self) -> None:
        if not self._client.closed:
            self._client._run(self._stream.aclose())

    def __enter__(self) -> SyncEventStream:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


_END: Any = object()


async def _next_or_end(stream: AsyncIterator[T]) -> T:
    # StopAsyncIteration must not cross into a concurrent.futures.Future; _END stands for it.
    try:
        return await stream.__anext__()
    except StopAsyncIteration:
        return _END
