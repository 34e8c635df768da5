"""The Textual monitor driven by its pilot (`App.run_test()`) against a real daemon's socket.

Other clients act on the daemon through ksi_client; the tests read what a user would see:
the rows of the agents and completions tables, the lines of the event stream, the status line
and the footer. The snapshot test renders fixed events at a fixed size and clock and compares
the screen with tests/snapshots/; `KSI_UPDATE_SNAPSHOTS=1 ./run_tests.sh tests/test_monitor_tui.py`
rewrites the snapshot files after an intended change (look at them before committing).
"""
from __future__ import annotations

import asyncio
import io
import os
import re
import shutil
import signal
import tempfile
import time
from pathlib import Path

import pytest
from rich.console import Console
from textual.widgets import DataTable, RichLog, Static

from conftest import DaemonProcess
from inprocess import ThreadedDaemon
from interfaces.monitor.app import MonitorApp
from ksi_client import Event, EventClient, KSIUnknownEventError

SIZE = (120, 36)
WAIT_S = 20            # a bound for waits that succeed in well under a second; reached only when broken
SNAPSHOTS = Path(__file__).parent / "snapshots"


@pytest.fixture(scope="module")
def shared_daemon():
    """One daemon for the tests that only need one running (each starts its own monitor): in
    this process, behind its real socket, which the monitor reads as it would any daemon's."""
    workdir = Path(tempfile.mkdtemp(prefix="ksi-mon-", dir="/tmp"))
    daemon = ThreadedDaemon(workdir).start()
    yield daemon
    daemon.stop()
    shutil.rmtree(workdir, ignore_errors=True)


def monitor(socket_path, **options) -> MonitorApp:
    return MonitorApp(socket_path, retry_every_s=0.2, metrics_every_s=0.5, **options)


async def wait_until(pilot, condition, what: str):
    deadline = time.monotonic() + WAIT_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"the monitor never showed {what}:\n{screen_text(pilot.app)}")
        await pilot.pause(0.1)


def status_of(app) -> str:
    return str(app.query_one("#status", Static).render())


def stream_lines(app) -> list[str]:
    return [line.text for line in app.query_one("#stream", RichLog).lines]


def stream_shows(app, text: str) -> bool:
    return any(text in line for line in stream_lines(app))


def rows_of(app, table_id: str) -> dict[str, list[str]]:
    table = app.query_one(table_id, DataTable)
    return {str(row.key.value): [str(cell) for cell in table.get_row(row.key)]
            for row in table.ordered_rows}


def screen_text(app) -> str:
    """The screen as plain text, as a terminal would show it (for snapshots and failures)."""
    width, height = app.size
    console = Console(width=width, height=height, file=io.StringIO(), record=True,
                      force_terminal=True, color_system=None, legacy_windows=False)
    console.print(app.screen._compositor.render_update(full=True))
    return console.export_text()


async def connected(pilot) -> None:
    await wait_until(pilot, lambda: status_of(pilot.app).startswith("connected to"),
                     "a connection")


async def test_a_completion_from_another_client_shows_with_tokens_and_duration(shared_daemon):
    app = monitor(shared_daemon.socket_path)
    async with app.run_test(size=SIZE) as pilot, EventClient(shared_daemon.socket_path) as other:
        await connected(pilot)
        result = await other.emit("completion:request", {"prompt": "Is the monitor watching?"})
        await wait_until(pilot, lambda: rows_of(app, "#completions").get(result["request_id"],
                                                                          [""] * 6)[4],
                         "the finished completion")
        row = rows_of(app, "#completions")[result["request_id"]]
        usage = result["usage"]
        assert row[1] == result["model"] and row[3] == "done"
        assert row[4] == f"{result['duration_ms'] / 1000:.2f} s"
        assert row[5] == f"{usage['prompt_tokens']}/{usage['completion_tokens']}"
        assert stream_shows(app, "completion:result")
        # The footer's figures come from system:metrics: both clients are counted, and a
        # rate appears once two samples were taken.
        footer = lambda: str(app.query_one("#metrics", Static).render())  # noqa: E731
        await wait_until(pilot, lambda: "events/s –" not in footer()
                         and "connections 2 " in footer(), "an events/s figure")
        assert re.search(r"p99 [0-9.]+ ms \([a-z_:]+\)", footer()), footer()


async def test_agents_listed_at_start_and_spawned_later_appear_with_their_status(shared_daemon):
    async with EventClient(shared_daemon.socket_path) as other:
        try:
            await other.emit("agent:spawn", {"profile": "assistant", "agent_id": "early-bird"})
        except KSIUnknownEventError:
            pytest.skip("the agent plugin does not answer agent:spawn yet")
        app = monitor(shared_daemon.socket_path)
        async with app.run_test(size=SIZE) as pilot:
            await connected(pilot)
            await wait_until(pilot, lambda: "early-bird" in rows_of(app, "#agents"),
                             "the agent that was running before it started")
            assert rows_of(app, "#agents")["early-bird"][1:3] == ["assistant", "running"]
            await other.emit("agent:spawn", {"profile": "critic", "agent_id": "late-comer"})
            await wait_until(pilot, lambda: "late-comer" in rows_of(app, "#agents"),
                             "the agent spawned by another client")
            assert rows_of(app, "#agents")["late-comer"][1:3] == ["critic", "running"]
            await other.emit("agent:terminate", {"agent_id": "late-comer"})
            await wait_until(pilot, lambda: rows_of(app, "#agents")["late-comer"][2]
                             .startswith("terminated"), "the terminated status")
        await other.emit("agent:terminate", {"agent_id": "early-bird"})


async def test_the_filter_hides_events_that_do_not_match_and_keeps_those_that_do(shared_daemon):
    app = monitor(shared_daemon.socket_path)
    async with app.run_test(size=SIZE) as pilot, EventClient(shared_daemon.socket_path) as other:
        await connected(pilot)
        await other.emit("state:set", {"key": "before-filter", "value": 1})
        await other.emit("message:publish", {"topic": "news", "content": "before-filter"})
        await wait_until(pilot, lambda: stream_shows(app, "message:publish"), "the publish")
        assert stream_shows(app, "state:changed")

        await pilot.press("f", *"state:*", "enter")
        assert not stream_shows(app, "message:publish")
        assert stream_shows(app, "state:changed") and stream_shows(app, "state:set")
        assert "filter: state:*" in app.query_one("#stream", RichLog).border_title

        await other.emit("message:publish", {"topic": "news", "content": "after-filter"})
        await other.emit("state:set", {"key": "after-filter", "value": 2})
        await wait_until(pilot, lambda: stream_shows(app, '"key":"after-filter"'),
                         "the matching event sent after the filter was set")
        assert not stream_shows(app, "message:publish")

        # A plain word matches any event name containing it; an empty filter shows all again,
        # including what was hidden (the events were kept).
        await pilot.press("f", *["backspace"] * 7, *"publish", "enter")
        assert stream_shows(app, "message:publish") and not stream_shows(app, "state:")
        await pilot.press("f", *["backspace"] * 7, "enter")
        assert stream_shows(app, "message:publish") and stream_shows(app, "state:changed")
        # Escape closes the filter without changing it.
        await pilot.press("f", *"zzz", "escape")
        assert stream_shows(app, "message:publish")


async def test_pause_holds_new_events_and_clear_empties_the_stream(shared_daemon):
    app = monitor(shared_daemon.socket_path)
    async with app.run_test(size=SIZE) as pilot, EventClient(shared_daemon.socket_path) as other:
        await connected(pilot)
        await other.emit("state:set", {"key": "seen-live", "value": 1})
        await wait_until(pilot, lambda: stream_shows(app, "seen-live"), "the first event")

        await pilot.press("p")
        await other.emit("state:set", {"key": "while-paused", "value": 2})
        title = lambda: app.query_one("#stream", RichLog).border_title  # noqa: E731
        await wait_until(pilot, lambda: app.held >= 2 and f"PAUSED, {app.held} new" in title(),
                         "the held events (state:set and state:changed) counted")
        assert not stream_shows(app, "while-paused")

        await pilot.press("p")
        assert stream_shows(app, "while-paused") and "PAUSED" not in title()

        result = await other.emit("completion:request", {"prompt": "to be cleared"})
        # The last event the completion causes is the turn stored after its answer: cleared
        # before it arrives, it would be drawn after the clear.
        await wait_until(pilot, lambda: rows_of(app, "#completions").get(
            result["request_id"], [""] * 4)[3] == "done" and stream_shows(
                app, "conversation:append"), "the finished completion and its stored turn")
        await pilot.press("c")
        assert stream_lines(app) == [] and rows_of(app, "#completions") == {}
        await other.emit("state:set", {"key": "after-clear", "value": 3})
        await wait_until(pilot, lambda: stream_shows(app, "after-clear"), "an event after clear")
        assert not stream_shows(app, "seen-live")


async def test_no_daemon_at_start_then_a_restart_under_the_monitor(workdir):
    daemon = DaemonProcess(workdir)
    app = monitor(daemon.socket_path)
    try:
        async with app.run_test(size=SIZE) as pilot:
            await wait_until(pilot, lambda: "./daemon_control.py start" in status_of(app),
                             "how to start a daemon")
            assert str(daemon.socket_path) in status_of(app)

            await asyncio.to_thread(daemon.start)
            await connected(pilot)
            async with EventClient(daemon.socket_path) as other:
                await other.emit("state:set", {"key": "first-life", "value": 1})
            await wait_until(pilot, lambda: stream_shows(app, "first-life"), "the first event")

            assert await asyncio.to_thread(daemon.stop, signal.SIGTERM) == 0
            await wait_until(pilot, lambda: "the daemon went away" in status_of(app),
                             "that the daemon went away")
            # The status line changes at once, the stream at the next redraw (0.2 s later).
            await wait_until(pilot, lambda: stream_shows(app, "lost the daemon"),
                             "the lost daemon in the stream")
            assert "no daemon" in str(app.query_one("#metrics", Static).render())
            await pilot.pause(0.5)  # a few failed attempts to reconnect must not hurt

            await asyncio.to_thread(daemon.start)
            await connected(pilot)
            async with EventClient(daemon.socket_path) as other:
                await other.emit("state:set", {"key": "second-life", "value": 2})
            await wait_until(pilot, lambda: stream_shows(app, "second-life"),
                             "an event from the restarted daemon (so it subscribed again)")
            assert stream_shows(app, "first-life")  # the history survives the restart
            assert sum("connected to the daemon" in line for line in stream_lines(app)) == 2
    finally:
        if daemon.proc is not None and daemon.proc.poll() is None:
            daemon.proc.kill()
            daemon.proc.wait()


class FixedClock:
    """Each reading is one second after the previous one, from a fixed start."""

    def __init__(self, start: float):
        self.now = start

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


SNAPSHOT_EVENTS = [
    ("agent:spawned", {"agent_id": "researcher-1", "profile": "researcher", "session_id": "s-1"}),
    ("agent:spawned", {"agent_id": "critic-1", "profile": "critic", "session_id": "s-2"}),
    ("agent:status", {"agent_id": "critic-1", "status": "restarting", "reason": "crashed",
                      "attempt": 1}),
    ("completion:progress", {"request_id": "researcher-1:m-1", "status": "processing"}),
    ("completion:result", {"request_id": "researcher-1:m-1", "session_id": "s-1",
                           "model": "ksi-offline/default", "agent_id": "researcher-1",
                           "text": "Three sources agree.", "duration_ms": 1250.0,
                           "usage": {"prompt_tokens": 42, "completion_tokens": 17,
                                     "total_tokens": 59}}),
    ("completion:progress", {"request_id": "c-7", "status": "queued"}),
    ("completion:error", {"request_id": "c-7", "session_id": "s-9",
                          "error": {"code": "timeout", "message": "past 30 s"}}),
    ("state:changed", {"namespace": "global", "key": "plan", "version": 3, "op": "set"}),
    ("agent:terminated", {"agent_id": "researcher-1", "reason": "done"}),
]


async def test_the_screen_matches_its_snapshot(monkeypatch):
    monkeypatch.setenv("TZ", "UTC")
    monkeypatch.delenv("NO_COLOR", raising=False)
    time.tzset()
    try:
        # No link runs (connect=False): the test reports to the app what the link reports
        # on a connection, so nothing on screen depends on timing.
        app = monitor("/run/ksi-snapshot/daemon.sock", clock=FixedClock(1_799_999_990.0),
                      connect=False)
        async with app.run_test(size=SIZE) as pilot:
            app.theme = "textual-dark"  # whatever TEXTUAL_THEME says
            app.daemon_connected(app.link.socket_path)
            app.daemon_agents([{"agent_id": "analyst-1", "profile": "analyst",
                                "status": "running", "created_at": 1_799_999_000.0,
                                "session_id": "s-0", "messages_handled": 4}], "")
            for index, (name, data) in enumerate(SNAPSHOT_EVENTS):
                app.daemon_event(Event(name, data, None, 1_800_000_000.0 + index * 0.25))
            app.daemon_metrics({"events_total": 100, "connections": 3, "events": {}}, "")
            app.daemon_metrics({"events_total": 142, "connections": 3, "events": {
                "state:set": {"count": 20, "p99_ms": 1.5},
                "completion:request": {"count": 2, "p99_ms": 1250.0}}}, "")
            await pilot.press("p")
            app.daemon_event(Event("message:received", {"topic": "news"}, None, 1_800_000_005.0))
            await pilot.pause(0.3)
            text, svg = screen_text(app), app.export_screenshot(title="KSI monitor")
    finally:
        monkeypatch.undo()
        time.tzset()
    assert_snapshot("monitor.txt", text)
    assert_snapshot("monitor.svg", svg)


def assert_snapshot(name: str, actual: str) -> None:
    path = SNAPSHOTS / name
    if os.environ.get("KSI_UPDATE_SNAPSHOTS") == "1":
        SNAPSHOTS.mkdir(exist_ok=True)
        path.write_text(actual)
        return
    assert path.exists(), f"no snapshot {path}: run with KSI_UPDATE_SNAPSHOTS=1 to write it"
    expected = path.read_text()
    if actual != expected:
        rejected = path.with_suffix(".actual" + path.suffix)
        rejected.write_text(actual)
        raise AssertionError(f"the screen differs from {path}; what it shows now is in "
                             f"{rejected} (KSI_UPDATE_SNAPSHOTS=1 accepts it)")
