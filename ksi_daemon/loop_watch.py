"""Loop stalls: how often the event loop stopped answering for longer than a threshold, and what
it was running meanwhile.

A heartbeat on the loop (a timer every `beat_s`) notes when it was due. A watchdog thread wakes
as often and, once the heartbeat is overdue by more than the threshold, reads the loop thread's
current stack (`sys._current_frames()`) once for that stall. When the heartbeat finally runs, it
knows how late it ran: that is the stall, counted in `figures()` (system:metrics shows them as
`loop_stalls`) and logged as `loop_stalled` with the function the watchdog saw running and the
event whose handler it belongs to. Nothing runs per request: the cost is one timer and one
thread wake-up per `beat_s`.

A function that holds the GIL in one long C call (a regex over megabytes) keeps the watchdog
from running too: it then names what runs once that call has returned, usually its caller.
"""
from __future__ import annotations

import asyncio
import sys
import threading
import time
from typing import Callable

import structlog

log = structlog.get_logger("ksi.loop")
STALL_THRESHOLD_S = 0.05
BEAT_S = 0.02
STACK_DEPTH = 8
_HERE = __name__
# The innermost Python frame of a loop that is between callbacks (uvloop runs them from C).
_LOOP_ITSELF = ("asyncio.runners.", "asyncio.base_events.", "uvloop.")
_WAITING = {"threading", "queue", "concurrent.futures.thread"}  # threads idle in a wait


class LoopWatch:
    """Start it on the loop it watches; `figures()` from that loop (a handler) at any time."""

    def __init__(self, threshold_s: float = STALL_THRESHOLD_S, beat_s: float = BEAT_S,
                 handler_names: Callable[[], dict] | None = None):
        self.threshold_s, self.beat_s = threshold_s, beat_s
        # code object -> event name, asked at a stall only (to name the handler in the stack)
        self.handler_names = handler_names or dict
        self.stalls = 0
        self.longest_s = 0.0
        self.total_s = 0.0
        self.last: dict | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._due = 0.0  # when the pending heartbeat should run (monotonic)
        self._seen: tuple[float, dict] | None = None  # (the heartbeat it was seen for, what ran)
        self._stopped = threading.Event()

    # ---- on the loop -----------------------------------------------------------------------

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._schedule_beat()
        threading.Thread(target=self._watch, name="loop-watch", daemon=True).start()

    def stop(self) -> None:
        self._stopped.set()

    def figures(self) -> dict:
        return {"count": self.stalls, "longest_ms": round(self.longest_s * 1000, 1),
                "total_ms": round(self.total_s * 1000, 1),
                "threshold_ms": round(self.threshold_s * 1000, 1), "last": self.last}

    def _schedule_beat(self) -> None:
        self._due = time.monotonic() + self.beat_s
        self._loop.call_later(self.beat_s, self._beat)

    def _beat(self) -> None:
        if self._stopped.is_set():
            return
        late = time.monotonic() - self._due
        if late > self.threshold_s:
            self._record(late)
        self._schedule_beat()

    def _record(self, late: float) -> None:
        seen = self._seen
        running = seen[1] if seen is not None and seen[0] == self._due else \
            {"running": "unknown (the watchdog itself could not run: one C call held the GIL)"}
        self.stalls += 1
        self.total_s += late
        self.longest_s = max(self.longest_s, late)
        self.last = {"at": round(time.time(), 3), "stalled_ms": round(late * 1000, 1), **running}
        log.warning("loop_stalled", stalled_ms=self.last["stalled_ms"],
                    **{k: v for k, v in running.items() if k != "stack"})

    # ---- on the watchdog thread ------------------------------------------------------------

    def _watch(self) -> None:
        while not self._stopped.wait(self.beat_s):
            if self._loop.is_closed():
                return
            due = self._due
            if time.monotonic() - due > self.threshold_s and \
                    (self._seen is None or self._seen[0] != due):
                frames = sys._current_frames()
                seen = self._describe(frames.pop(self._loop_thread, None))
                if seen["running"].startswith(_LOOP_ITSELF):
                    # No handler runs: the loop thread waits for the GIL (or is in a C call):
                    # what the other threads run is what holds it.
                    seen["other_threads"] = _innermost_of_threads(frames)
                self._seen = (due, seen)
                del frames  # a frame kept alive keeps its locals alive

    def _describe(self, frame) -> dict:
        """What the loop runs: its innermost function, the handler it is in, a short stack."""
        try:
            names = self.handler_names()
        except Exception:  # noqa: BLE001 - naming is a courtesy; the stall is still counted
            names = {}
        stack, handler = [], None
        while frame is not None:
            if handler is None:
                handler = names.get(frame.f_code)
            if frame.f_globals.get("__name__") != _HERE:
                stack.append((_function_of(frame), _place_of(frame)))
            frame = frame.f_back
        if not stack:
            return {"running": "nothing (idle)", "where": None, "stack": []}
        described = {"running": stack[0][0], "where": stack[0][1],
                     "stack": [f"{function} ({place})" for function, place in stack[:STACK_DEPTH]]}
        if handler is not None:
            described["handler"] = handler
        return described


def _function_of(frame) -> str:
    return f"{frame.f_globals.get('__name__', '?')}.{frame.f_code.co_qualname}"


def _place_of(frame) -> str:
    return f"{frame.f_code.co_filename}:{frame.f_lineno}"


def _innermost_of_threads(frames: dict) -> list[str]:
    names = {thread.ident: thread.name for thread in threading.enumerate()}
    found = []
    for ident, frame in frames.items():
        if names.get(ident) == "loop-watch" or frame.f_globals.get("__name__") in _WAITING:
            continue
        found.append(f"{names.get(ident, ident)}: {_function_of(frame)} ({_place_of(frame)})")
    return found


def handler_names_of(router) -> Callable[[], dict]:
    """For LoopWatch: the code object of each event handler in `router`'s index -> event name."""
    def names() -> dict:
        found = {}
        for event, handler in list(getattr(router, "handlers", {}).items()):
            func = getattr(handler, "func", None)
            code = getattr(getattr(func, "__func__", func), "__code__", None)
            if code is not None:
                found.setdefault(code, event)
        return found
    return names
