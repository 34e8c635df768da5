"""The Textual app: agents, completions, the event stream and the daemon's figures.

Pushes only change the state (cheap, whatever their rate); a timer redraws what changed a few
times a second, so a busy daemon costs the monitor one redraw per tick, not one per event.
"""
from __future__ import annotations

import argparse
import time
from datetime import datetime
from pathlib import Path
from typing import Callable

from rich.text import Text
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.widgets import DataTable, Footer, Input, RichLog, Static

from ksi_client import Event
from ksi_client.socket_path import START_COMMAND

from ..options import add_socket_option
from .link import RETRY_EVERY_S, DaemonLink
from .state import AGENTS, COMPLETIONS, STREAM, EventFilter, Figures, MonitorState, StreamLine

REDRAW_EVERY_S = 0.2
MAX_LINES_PER_DRAW = 200  # stream lines written per redraw; more in one tick are summarised

STATUS_STYLE = {"running": "green", "restarting": "yellow", "failed": "bold red",
                "terminated": "dim"}


def clock_time(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp).strftime("%H:%M:%S.%f")[:-3]


def figures_text(figures: Figures, problem: str) -> str:
    rate = "–" if figures.events_per_s is None else f"{figures.events_per_s:.1f}"
    p99 = "–" if figures.worst_p99_ms is None else \
        f"{figures.worst_p99_ms:.1f} ms ({figures.worst_p99_event})"
    connections = "–" if figures.connections is None else str(figures.connections)
    total = "–" if figures.events_total is None else str(figures.events_total)
    text = f" events/s {rate} │ p99 {p99} │ connections {connections} │ events {total}"
    return f"{text} │ {problem}" if problem else text


class MonitorApp(App):
    TITLE = "KSI monitor"
    ENABLE_COMMAND_PALETTE = False
    CSS = """
    #status { height: auto; max-height: 3; padding: 0 1; background: $success 30%; }
    #status.down { background: $error 40%; }
    DataTable { height: 1fr; overflow-x: hidden; border: round $primary; }
    #stream { height: 2fr; border: round $primary; overflow-x: hidden; }
    #stream.paused { border: round $warning; }
    #filter { display: none; }
    #filter.shown { display: block; }
    #metrics { height: 1; background: $panel; }
    """
    BINDINGS = [
        Binding("q", "quit", "Quit"),
        Binding("p", "toggle_pause", "Pause"),
        Binding("f", "edit_filter", "Filter"),
        Binding("c", "clear", "Clear"),
        Binding("escape", "close_filter", "Close filter", show=False),
        Binding("ctrl+c", "quit", "Quit", show=False),  # what a terminal user tries first
    ]

    def __init__(self, socket_path: str | Path | None = None, *,
                 clock: Callable[[], float] = time.time, connect: bool = True,
                 retry_every_s: float = RETRY_EVERY_S, metrics_every_s: float | None = None):
        super().__init__()
        self.state = MonitorState(clock)
        extra = {} if metrics_every_s is None else {"metrics_every_s": metrics_every_s}
        self.link = DaemonLink(socket_path, self, retry_every_s=retry_every_s, **extra)
        self.connect_on_mount = connect
        self.filter = EventFilter()
        self.paused = False
        self.held = 0              # events that arrived while paused
        self._written_seq = -1     # the last stream line written to the log
        self._dirty: set[str] = {AGENTS, COMPLETIONS, STREAM}
        self._down_since: float | None = None

    # ---- layout -----------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield Static("connecting…", id="status")
        yield DataTable(id="agents", cursor_type="row", zebra_stripes=True)
        yield DataTable(id="completions", cursor_type="row", zebra_stripes=True)
        yield RichLog(id="stream", max_lines=self.state.events.maxlen, wrap=False)
        yield Input(placeholder="event pattern: agent:*, completion:re*, or a word; "
                                "empty shows all (Enter applies, Esc cancels)", id="filter")
        yield Static(figures_text(Figures(), ""), id="metrics")
        yield Footer()

    def on_mount(self) -> None:
        agents = self.query_one("#agents", DataTable)
        agents.add_columns("agent", "profile", "status", "session", "handled")
        completions = self.query_one("#completions", DataTable)
        completions.add_columns("request", "model", "agent", "status", "duration",
                                "tokens in/out")
        self.set_interval(REDRAW_EVERY_S, self.redraw)
        self.redraw()
        if self.connect_on_mount:
            self.run_worker(self.link.run(), name="daemon-link", exclusive=True)

    # ---- what the link reports --------------------------------------------------------------

    def daemon_connected(self, socket_path: Path) -> None:
        self._down_since = None
        self.state.forget_rate()
        self._set_status(f"connected to {socket_path}", down=False)
        self.state.note(f"connected to the daemon at {socket_path}")
        self._dirty.add(STREAM)

    def daemon_unreachable(self, message: str, was_connected: bool) -> None:
        if was_connected and self._down_since is None:
            self._down_since = self.state.clock()
            self.state.note(f"lost the daemon: {message}")
            self._dirty.add(STREAM)
        if was_connected:
            status = (f"the daemon went away at {clock_time(self._down_since)[:8]}; "
                      f"reconnecting every {self.link.retry_every_s:g} s "
                      f"(start it again with `{START_COMMAND}`)")
        else:
            status = f"{message}; retrying every {self.link.retry_every_s:g} s"
        self._set_status(status, down=True)
        problem = "no daemon: the figures are the last ones it gave" if was_connected \
            else "no daemon"
        self.query_one("#metrics", Static).update(figures_text(self.state.figures, problem))

    def daemon_event(self, event: Event) -> None:
        changed = self.state.apply(event)
        if self.paused:
            self.held += 1
        self._dirty |= changed

    def daemon_agents(self, agents: list[dict] | None, problem: str) -> None:
        if agents is None:
            changed = self.state.agents_unavailable != problem
            self.state.agents_unavailable = problem
        else:
            # Redrawn only when something changed: a redraw puts the table's cursor back.
            was_unavailable = bool(self.state.agents_unavailable)
            changed = self.state.replace_agents(agents) or was_unavailable
        if changed:
            self._dirty.add(AGENTS)

    def daemon_metrics(self, metrics: dict | None, problem: str) -> None:
        if metrics is not None:
            self.state.take_metrics(metrics)
        self.query_one("#metrics", Static).update(figures_text(self.state.figures, problem))

    def _set_status(self, text: str, down: bool) -> None:
        status = self.query_one("#status", Static)
        status.update(text)
        status.set_class(down, "down")

    # ---- drawing ----------------------------------------------------------------------------

    def redraw(self) -> None:
        dirty, self._dirty = self._dirty, set()
        if AGENTS in dirty:
            self._draw_agents()
        if COMPLETIONS in dirty:
            self._draw_completions()
        if STREAM in dirty or self.paused:
            self._draw_stream()

    def _draw_agents(self) -> None:
        table = self.query_one("#agents", DataTable)
        table.clear()
        for row in sorted(self.state.agents.values(), key=lambda r: r.agent_id):
            status = Text(row.status + (f" ({row.reason})" if row.reason else ""),
                          style=STATUS_STYLE.get(row.status, ""))
            handled = "" if row.messages_handled is None else str(row.messages_handled)
            table.add_row(row.agent_id, row.profile, status, row.session_id, handled,
                          key=row.agent_id)
        title = f"Agents ({len(self.state.agents)})"
        if self.state.agents_unavailable:
            title += f" – {self.state.agents_unavailable}"
        table.border_title = title

    def _draw_completions(self) -> None:
        table = self.query_one("#completions", DataTable)
        table.clear()
        for row in self.state.completions.values():
            duration = "" if row.duration_ms is None else f"{row.duration_ms / 1000:.2f} s"
            tokens = "" if row.total_tokens is None else \
                f"{_count(row.prompt_tokens)}/{_count(row.completion_tokens)}"
            # An agent's request id repeats its agent id, shown beside it: its end tells them apart.
            table.add_row(_cut_left(row.request_id, 26), _cut(row.model, 24),
                          _cut(row.agent_id, 20), row.status, duration, tokens,
                          key=row.request_id)
        if table.row_count:
            table.move_cursor(row=table.row_count - 1, animate=False)
        table.border_title = f"Completions ({len(self.state.completions)})"

    def _draw_stream(self, even_if_paused: bool = False) -> None:
        log = self.query_one("#stream", RichLog)
        if even_if_paused or not self.paused:
            unwritten = []
            for line in reversed(self.state.events):
                if line.seq <= self._written_seq:
                    break
                unwritten.append(line)
            shown = [line for line in reversed(unwritten) if self.filter.shows(line)]
            if len(shown) > MAX_LINES_PER_DRAW:
                # A burst larger than a screenful is not worth its drawing time; the skipped
                # events are kept and come back when the filter changes.
                skipped = len(shown) - MAX_LINES_PER_DRAW
                log.write(Text(f"… {skipped} events not drawn (kept: set a filter to see "
                               "them)", style="dim italic"))
                shown = shown[skipped:]
            for line in shown:
                log.write(self._stream_text(line))
            if unwritten:
                self._written_seq = unwritten[0].seq
        title = f"Events ({self.state.events_seen} received)"
        if self.filter.pattern:
            title += f" – filter: {self.filter.pattern}"
        if self.paused:
            title += f" – PAUSED, {self.held} new (p resumes)"
        log.border_title = title
        log.set_class(self.paused, "paused")

    @staticmethod
    def _stream_text(line: StreamLine) -> Text:
        text = Text(clock_time(line.timestamp) + "  ", style="dim")
        if line.event is None:
            text.append(f"── {line.text}", style="bold yellow")
        else:
            text.append(f"{line.event:<24}", style="bold cyan")
            text.append(" " + line.text)
        return text

    # ---- keys -------------------------------------------------------------------------------

    def action_toggle_pause(self) -> None:
        self.redraw()  # what arrived before the key press is shown before the stream stops
        self.paused = not self.paused
        self.held = 0
        self._dirty.add(STREAM)
        self.redraw()

    def action_clear(self) -> None:
        self.state.clear_history()
        self.query_one("#stream", RichLog).clear()
        self.held = 0
        self._dirty |= {STREAM, COMPLETIONS, AGENTS}
        self.redraw()

    def action_edit_filter(self) -> None:
        field = self.query_one("#filter", Input)
        field.value = self.filter.pattern
        field.add_class("shown")
        field.focus()

    def action_close_filter(self) -> None:
        field = self.query_one("#filter", Input)
        field.remove_class("shown")
        self.query_one("#stream", RichLog).focus()

    def on_input_submitted(self, message: Input.Submitted) -> None:
        self.set_filter(message.value)
        self.action_close_filter()

    def set_filter(self, pattern: str) -> None:
        """Show only the kept events that match `pattern`, now and from now on."""
        self.filter = EventFilter(pattern)
        self.query_one("#stream", RichLog).clear()
        self._written_seq = -1
        self.held = 0
        self.redraw()
        self._draw_stream(even_if_paused=True)  # a paused stream shows its new filter too


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[:width - 1] + "…"


def _cut_left(text: str, width: int) -> str:
    return text if len(text) <= width else "…" + text[1 - width:]


def _count(value) -> str:
    return "?" if value is None else str(value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="monitor_tui.py",
        description="Watch a KSI daemon: agents, completions, every event, and its figures.")
    add_socket_option(parser)
    parser.add_argument("--interval", type=float, default=None, metavar="SECONDS",
                        help="how often the metrics footer asks the daemon (default 2)")
    args = parser.parse_args(argv)
    if args.interval is not None and args.interval <= 0:
        parser.error("--interval must be a positive number of seconds")
    MonitorApp(args.socket, metrics_every_s=args.interval).run()
    return 0
