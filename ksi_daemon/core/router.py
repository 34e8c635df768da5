"""The core: a request line in, exactly one reply out.

    line -> parse_request -> handler index (one dict lookup) -> validate -> handler -> reply
                                                                        -> subscribers (pushes)
                                                                        -> history ring, timings

Sync handlers run inline (no task); one may return an asyncio Future instead of its reply
(answered from the future's done-callback), or `ctx.reply_later()`, an owed reply it settles
(how the state plugin answers a write at its commit); async handlers run as tasks, started in
arrival order. Both get the `event_timeout` deadline unless the handler declared its own. Every
request is finished by the one reply path (`reply.py`): a handler that raises answers with a
coded error, and the router never lets an exception escape to the transport.
Plugins reach the router through `Context.emit()` (route an event to its handler and to
subscribers) and `Context.push()` (send an event to the requesting connection and subscribers).
A request's own connection gets those pushes after its reply (`held_pushes.py`).
"""
from __future__ import annotations

import asyncio
import difflib
import inspect
import time
from collections import deque
from typing import Any, Callable

import structlog

from ..event_system import DEFAULT_TIMEOUT, call_hook, compile_pattern, validator_of
from .adapters import adapted_handler
from .context import Context
from .event_stats import EventStats, by_plugin, percentiles_ms
from .history import entry_limit, estimated_size, truncated
from .protocol import (FORBIDDEN, TIMEOUT, UNAVAILABLE, UNKNOWN_EVENT, KSIError, as_reply_data,
                       encode_error, encode_push, parse_request)
from .reply import OwedReply, ReplyPath, as_ksi_error

log = structlog.get_logger("ksi.router")
_perf = time.perf_counter
_now = time.time
MAX_MATCH_CACHE = 4096
SHUTTING_DOWN = KSIError(UNAVAILABLE, "the daemon is shutting down")


class Handler:
    """One entry of the dispatch index: everything about an event decided once, at start."""
    __slots__ = ("event", "func", "model", "validate", "is_async", "wants_ctx", "plugin",
                 "summary", "returns", "timeout", "stats", "streams", "holds")

    def __init__(self, event: str, func: Callable, plugin: Any, model=None, summary=None,
                 returns=None, timeout=DEFAULT_TIMEOUT, streams=False):
        self.event, self.func, self.plugin = event, func, plugin
        self.model, self.summary, self.returns, self.timeout = model, summary, returns, timeout
        self.validate = validator_of(model)
        self.is_async = inspect.iscoroutinefunction(func)
        params = [p for p in inspect.signature(func).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        self.wants_ctx = len(params) >= 2
        # Only a handler given the request's context can push with its correlation id: its
        # pushes wait for its reply (held_pushes.py), unless they are its answer as it streams.
        self.streams = streams
        self.holds = self.wants_ctx and not streams
        self.stats = EventStats()

    def disable(self, reason: str) -> None:
        """Answer `unavailable` from now on: the plugin behind this event failed."""
        def unavailable(data):
            raise KSIError(UNAVAILABLE, reason)
        self.func, self.model, self.is_async, self.wants_ctx = unavailable, None, False, False
        self.validate, self.holds = None, False


class Router:
    def __init__(self, *, event_timeout: float = 30.0, max_event_history: int = 1000,
                 max_event_history_bytes: int = 8 * 1024 * 1024, log_events: bool = False):
        self.event_timeout = event_timeout
        self.log_events = log_events
        self.handlers: dict[str, Handler] = {}
        # What a client's request finds: the same handlers, but a refusal for internal events.
        self.client_handlers: dict[str, Handler] = {}
        self.failed_namespaces: dict[str, str] = {}  # namespace -> why its plugin failed
        self.fallbacks: list[tuple[Any, Callable, tuple[str, ...]]] = []
        self.pre_hooks: list[tuple[Any, Callable, tuple[str, ...]]] = []
        self.post_hooks: list[tuple[Any, Callable, tuple[str, ...]]] = []
        self.refusal_hooks: list[tuple[Any, Callable, tuple[str, ...]]] = []
        self.history: deque = deque(maxlen=max_event_history)
        self.history_limit = entry_limit(max_event_history, max_event_history_bytes)
        self.other_stats: dict[str, EventStats] = {"(rejected)": EventStats(),
                                                   "(unknown)": EventStats()}
        self.connections: set = set()
        self.pushes_dropped_by_closed = 0  # so that metrics keep counting them after they go
        # Requests being answered (tasks, futures) -> the Handler answering each (None: a
        # fallback, or an announce), so a plugin's reload can wait for its own (`running_on`).
        self.in_flight: dict[asyncio.Future, Handler | None] = {}
        self.owed: set[OwedReply] = set()  # replies handed out by ctx.reply_later()
        self.accepting = True
        self._slow_path = False
        self.subscriptions: dict[Any, dict[str, Callable[[str], bool]]] = {}
        self._match_cache: dict[str, tuple] = {}
        self.replies = ReplyPath(self)

    # ---- set-up (called by the plugin manager at start) ---------------------------------------

    def add_handler(self, handler: Handler, for_clients: Handler | None = None) -> None:
        self.handlers[handler.event] = handler
        self.client_handlers[handler.event] = for_clients or handler

    def remove_handler(self, event: str) -> None:  # its name answers unknown_event from now on
        self.handlers.pop(event, None)
        self.client_handlers.pop(event, None)

    def seal(self) -> None:  # decide once whether requests take the slower middleware path
        self._slow_path = bool(self.pre_hooks or self.post_hooks)

    def adapt_for_clients(self, event: str, adapter) -> bool:
        """Clients' requests of `event` go through `adapter` (adapters.py); False when nobody
        handles `event`. Plugins' own emits are not adapted."""
        handler = self.client_handlers.get(event)
        if handler is None:
            return False
        self.client_handlers[event] = adapted_handler(self, handler, adapter)
        return True

    # ---- the hot path -------------------------------------------------------------------------

    def handle_line(self, line: bytes, conn) -> None:
        """Process one request line from `conn`; exactly one reply is written back to it."""
        started = _perf()
        try:
            event, data, cid = parse_request(line, self.client_handlers)
        except KSIError as exc:
            if line.isspace():  # a blank line is no request (PROTOCOL.md §1): no reply
                return
            conn.send(encode_error(getattr(exc, "event", None),
                                   getattr(exc, "correlation_id", None), exc))
            self.other_stats["(rejected)"].record(started, False)
            return
        if self.log_events:
            log.debug("request", event_name=event, correlation_id=cid, connection=conn.id)
        if not self.accepting:  # answered now: a task made now could be cancelled unstarted
            return conn.send(encode_error(event, cid, SHUTTING_DOWN))
        if conn.grant is not None and (refused := conn.grant.refusal(event, started)) is not None:
            if refused.code == FORBIDDEN:
                self.report_refusal(event, refused, conn)
            return conn.send(encode_error(event, cid, refused))
        handler = self.client_handlers.get(event)
        if handler is None or self._slow_path:
            if handler is None or not handler.streams:  # (middleware, fallbacks get a context)
                conn.held.setdefault(cid, None)
            self._spawn(self._dispatch_slowly(event, data, cid, conn, started, len(line)),
                        conn, handler)
        elif handler.is_async:
            if handler.holds:
                conn.held.setdefault(cid, None)
            task = asyncio.get_running_loop().create_task(
                self._call_with_deadline(handler, event, data, cid, conn))
            self.replies.when_done(task, handler, event, data, cid, conn, started, len(line),
                                   None)
        else:
            try:
                arg = handler.validate(data) if handler.validate else data
                if handler.wants_ctx:
                    if handler.holds:
                        conn.held.setdefault(cid, None)
                    result = handler.func(arg, Context(self, event, cid, conn, handler.plugin))
                else:
                    result = handler.func(arg)
                if result.__class__ is not dict:  # (a dict, the usual answer, is finished now)
                    if result.__class__ is OwedReply:  # ctx.reply_later(): finished when settled
                        return result.owe(handler, data, started, len(line))
                    if isinstance(result, asyncio.Future):
                        return self.replies.when_done(result, handler, event, data, cid, conn,
                                                      started, len(line),
                                                      self._deadline_of(handler))
            except Exception as exc:  # noqa: BLE001 - every failure becomes a coded reply
                return self.replies.finish(handler, handler.stats, event, data, cid, conn,
                                           started, len(line), None, exc)
            self.replies.finish(handler, handler.stats, event, data, cid, conn, started,
                                len(line), result)

    def report_refusal(self, event: str, error: KSIError, conn) -> None:
        """Tell `ksi_request_refused` implementations (the audit) of a permission refusal."""
        for plugin, func, _argnames in self.refusal_hooks:
            try:
                func(event_name=event, error=error, connection=conn)
            except Exception as exc:  # noqa: BLE001 - the refusal is answered all the same
                log.error("refusal_hook_failed", plugin=getattr(plugin, "name", plugin),
                          error=repr(exc))

    def _deadline_of(self, handler: Handler) -> float | None:
        return self.event_timeout if handler.timeout == DEFAULT_TIMEOUT else handler.timeout

    async def _call_with_deadline(self, handler: Handler, event: str, data: dict, cid, conn,
                                  agent_id: str | None = None):
        arg = handler.validate(data) if handler.validate else data
        args = (arg, Context(self, event, cid, conn, handler.plugin, agent_id)) \
            if handler.wants_ctx else (arg,)
        waiting = handler.func(*args)
        if waiting.__class__ is OwedReply:  # ctx.reply_later()
            waiting = waiting.as_future()
        if not (handler.is_async or isinstance(waiting, asyncio.Future)):
            return waiting
        deadline = self._deadline_of(handler)
        if deadline is None:
            return await waiting
        try:
            async with asyncio.timeout(deadline):
                return await waiting
        except TimeoutError:
            raise KSIError(TIMEOUT, f"{event} did not finish within {deadline} s") from None

    async def _dispatch_slowly(self, event: str, data: dict, cid: str, conn, started: float,
                               size: int) -> None:
        """The path for unknown names, middleware, and requests arriving during shutdown."""
        handler = self.client_handlers.get(event)
        stats = handler.stats if handler is not None else None  # None: nobody answered
        result = exc = None
        try:
            if not self.accepting:
                raise KSIError(UNAVAILABLE, "the daemon is shutting down")
            ctx = Context(self, event, cid, conn, handler.plugin if handler else None)
            data = await self._run_pre_hooks(event, data, ctx)
            if handler is not None:
                result = as_reply_data(
                    await self._call_with_deadline(handler, event, data, cid, conn))
            else:
                result = await self._ask_fallbacks(event, data, ctx)
                stats = self.stats_of(event)  # answered: counted by its name from here on
            result = await self._run_post_hooks(event, data, result, ctx)
        except BaseException as failure:  # noqa: BLE001
            exc = failure
        self.replies.finish(handler, stats, event, data, cid, conn, started, size, result, exc)

    # ---- plugin-facing: emit and push -------------------------------------------------------

    async def emit(self, event: str, data: dict | None = None, *, correlation_id=None,
                   source=None, connection=None, agent_id: str | None = None) -> Any:
        """Route an event from inside the daemon: its handler runs (if any), subscribers see it.
        Returns the handler's reply data (None if unhandled); a failing handler raises KSIError."""
        data = {} if data is None else data
        started = _perf()
        handler = self.handlers.get(event)
        self._record_emit(event, data, correlation_id, source)
        ok = False
        try:
            if handler is not None:
                result = as_reply_data(await self._call_with_deadline(
                    handler, event, data, correlation_id, connection, agent_id))
            elif self.fallbacks:
                ctx = Context(self, event, correlation_id, connection, source, agent_id)
                result = await self._ask_fallbacks(event, data, ctx, missing_ok=True)
            else:
                result = None
            ok = True
            return result
        except BaseException as exc:
            if isinstance(exc, asyncio.CancelledError) and asyncio.current_task().cancelling():
                raise  # the caller is being cancelled, no handler failed: it must see that
            raise as_ksi_error(handler, event, correlation_id, exc) from exc
        finally:
            self.stats_of(event).record(started, ok)

    def announce(self, event: str, data: dict, correlation_id=None, source=None,
                 connection=None) -> None:
        """`emit` for code that cannot await (done-callbacks): when only subscribers can see the
        event, it is fanned out here with no task; else the emit is a task, its failure logged."""
        if event in self.handlers or self.fallbacks:
            task = asyncio.get_running_loop().create_task(self.emit(
                event, data, correlation_id=correlation_id, source=source, connection=connection))
            self.in_flight[task] = None
            task.add_done_callback(self._announced)
            return
        self._record_emit(event, data, correlation_id, source)
        # counted like a push: there is no handler to time
        (self.other_stats.get(event) or self.stats_of(event)).count += 1

    def announce_all(self, event: str, announced: list[tuple[str | None, dict]],
                     source=None) -> None:
        """`announce` of many events of one name at once, (correlation_id, data) each: the
        changes one commit made (one history entry each, one timestamp for them all). Their
        data is not measured for the history's limit: keep it small (state:changed's is)."""
        if event in self.handlers or self.fallbacks:
            for correlation_id, data in announced:
                self.announce(event, data, correlation_id, source)
            return
        now, name = _now(), getattr(source, "name", source)
        self.history.extend([(event, cid, now, name, data) for cid, data in announced])
        if self.subscriptions:
            for correlation_id, data in announced:
                self.fan_out(event, data, correlation_id, None)
        (self.other_stats.get(event) or self.stats_of(event)).count += len(announced)

    def _announced(self, task: asyncio.Task) -> None:  # log a failed announce
        self.in_flight.pop(task, None)
        if not task.cancelled() and task.exception() is not None:
            log.warning("announce_failed", error=str(task.exception()))

    def _record_emit(self, event: str, data: dict, correlation_id, source) -> None:
        size = estimated_size(data, self.history_limit)
        kept = data if size <= self.history_limit else truncated(data, size)
        self.history.append((event, correlation_id, _now(), getattr(source, "name", source), kept))
        if self.subscriptions:
            self.fan_out(event, data, correlation_id, None)

    def push(self, event: str, data: Any, correlation_id: str | None, connection) -> None:
        line = encode_push(event, data, correlation_id)
        self.stats_of(event).count += 1
        self.history.append((event, correlation_id, _now(), "push", data
                             if len(line) <= self.history_limit else truncated(data, len(line))))
        if connection is not None:
            connection.push(line, correlation_id)
        if self.subscriptions:
            for subscriber in self._subscribers_of(event):
                if subscriber is not connection:
                    subscriber.push(line, correlation_id)

    def stats_of(self, event: str) -> EventStats:
        """Timings of `event`; events without a handler of their own (pushes, fallback-answered
        names) are counted by name, which plugins choose, never clients."""
        handler = self.handlers.get(event)
        if handler is not None:
            return handler.stats
        stats = self.other_stats.get(event)
        if stats is None:
            stats = self.other_stats[event] = EventStats()
        return stats

    # ---- fallbacks and middleware -------------------------------------------------------------

    async def _ask_fallbacks(self, event: str, data: dict, ctx: Context, missing_ok=False):
        for plugin, func, argnames in self.fallbacks:
            result = await call_hook(func, argnames, event_name=event, data=data, context=ctx)
            if result is not None:
                return as_reply_data(result)
        if missing_ok:
            return None
        if event.partition(":")[0] in self.failed_namespaces:
            raise KSIError(UNAVAILABLE, self.failed_namespaces[event.partition(":")[0]])
        names = list(self.handlers)
        names += [c for p, _, _ in self.fallbacks for c in getattr(
            getattr(p, "capabilities", None), "commands", ())]
        suggestions = difflib.get_close_matches(event, names, n=5, cutoff=0.5)
        raise KSIError(UNKNOWN_EVENT, f"no handler for {event}" + (
            f"; did you mean {', '.join(suggestions)}?" if suggestions else ""),
            {"suggestions": suggestions})

    async def _run_pre_hooks(self, event: str, data: dict, ctx: Context) -> dict:
        for _plugin, func, argnames in self.pre_hooks:
            replaced = await call_hook(func, argnames, event_name=event, data=data, context=ctx)
            if replaced is not None:
                data = replaced
        return data

    async def _run_post_hooks(self, event: str, data: dict, result, ctx: Context):
        for _plugin, func, argnames in self.post_hooks:
            replaced = await call_hook(func, argnames, event_name=event, data=data,
                                       result=result, context=ctx)
            if replaced is not None:
                result = replaced
        return result

    # ---- subscriptions -----------------------------------------------------------------------

    def subscribe(self, conn, patterns: list[str]) -> list[str]:
        active = self.subscriptions.setdefault(conn, {})
        for pattern in patterns:
            active[pattern] = compile_pattern(pattern)
        self._match_cache.clear()
        return list(active)

    def unsubscribe(self, conn, patterns: list[str] | None = None) -> list[str]:
        active = self.subscriptions.get(conn, {})
        for pattern in list(active) if patterns is None else patterns:
            active.pop(pattern, None)
        if not active:
            self.subscriptions.pop(conn, None)
        self._match_cache.clear()
        return list(active)

    def connection_opened(self, conn) -> None:
        self.connections.add(conn)

    def connection_closed(self, conn) -> None:
        """A transport's report that `conn` is gone (a second report of it is ignored)."""
        if conn in self.connections:
            self.connections.remove(conn)
            self.pushes_dropped_by_closed += conn.pushes_dropped
        if self.subscriptions.pop(conn, None) is not None:
            self._match_cache.clear()

    def _subscribers_of(self, event: str) -> tuple:
        subscribers = self._match_cache.get(event)
        if subscribers is None:
            if len(self._match_cache) >= MAX_MATCH_CACHE:
                self._match_cache.clear()
            subscribers = self._match_cache[event] = tuple(
                conn for conn, patterns in self.subscriptions.items()
                if any(match(event) for match in patterns.values()))
        return subscribers

    def fan_out(self, event: str, data: dict, cid: str | None, origin) -> None:
        subscribers = self._subscribers_of(event)
        if subscribers:
            line = encode_push(event, data, cid)
            for conn in subscribers:
                if conn is not origin:
                    conn.push(line, cid)

    # ---- in-flight work and shutdown ----------------------------------------------------------

    def _spawn(self, coro, conn, handler: Handler | None) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self.in_flight[task] = handler
        task.add_done_callback(self._forget)
        conn.reply_owed()  # the connection stays open for this reply even after the client's EOF
        task.add_done_callback(conn.reply_done)

    def _forget(self, task: asyncio.Task) -> None:
        self.in_flight.pop(task, None)

    def running_on(self, plugin, unattributed: bool = False) -> tuple[list, list]:
        """The requests being answered by `plugin`'s handlers now: (tasks and futures, owed
        replies). `unattributed`: with the requests no handler answers (fallbacks', which
        `plugin` may be among)."""
        tasks = [f for f, h in self.in_flight.items()
                 if (h.plugin is plugin if h is not None else unattributed)]
        owed = [r for r in self.owed if r.handler is not None and r.handler.plugin is plugin]
        return tasks, owed

    async def expire_overdue_replies(self, period_s: float = 0.25) -> None:
        """Answer `timeout` for owed replies (`ctx.reply_later()`) left unsettled past their
        handler's deadline (a supervised service of the system plugin). One sweep a quarter
        second instead of a timer per request: the state plugin's writes owe theirs on the hot
        path (and declare no deadline: their writer sweeps its own)."""
        while True:
            await asyncio.sleep(period_s)
            now = _perf()
            for reply in [r for r in self.owed if r.handler is not None]:
                deadline = self._deadline_of(reply.handler)
                if deadline is not None and now - reply.started > deadline:
                    reply.set_exception(KSIError(
                        TIMEOUT, f"{reply.event} did not finish within {deadline} s"))

    async def drain(self, deadline_s: float) -> int:
        """Stop taking requests, wait for in-flight ones, cancel what is left at the deadline;
        return how many were cancelled (each still gets its `unavailable` reply)."""
        self.accepting = False
        until = _perf() + deadline_s
        if self.in_flight:
            await asyncio.wait(set(self.in_flight), timeout=deadline_s)
        while self.owed and _perf() < until:  # owed replies come by themselves (commits)
            await asyncio.sleep(0.005)
        owed, left = list(self.owed), list(self.in_flight)
        for reply in owed:
            reply.set_exception(asyncio.CancelledError())
        for task in left:
            task.cancel()
        if left:
            await asyncio.wait(left, timeout=1.0)
        return len(left) + len(owed)

    # ---- figures for system:metrics ----------------------------------------------------------

    def metrics(self) -> dict:
        per_event = {}
        entries = [(h.event, h.stats, h.plugin and h.plugin.name)
                   for h in self.handlers.values()] + \
            [(name, stats, None) for name, stats in self.other_stats.items()]
        for name, stats, plugin in entries:
            if stats.count:
                per_event[name] = {"count": stats.count, "errors": stats.errors,
                                   "plugin": plugin, **percentiles_ms(stats.durations)}
        connections = self.connections
        return {"events_total": sum(s["count"] for s in per_event.values()),
                "events": per_event, "plugins": by_plugin(self.handlers.values()),
                "connections": len(connections),
                "queues": {"in_flight_requests": len(self.in_flight) + len(self.owed),
                           "output_buffered_bytes": sum(c.buffered_bytes() for c in connections),
                           "pushes_dropped": self.pushes_dropped_by_closed + sum(
                               c.pushes_dropped for c in connections)}}
