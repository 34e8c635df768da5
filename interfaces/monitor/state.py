"""What the monitor knows about the daemon, kept apart from how it is drawn.

Every push the monitor receives goes through `MonitorState.apply`, which updates the agents,
the completions and the bounded event history, and says which of them changed so the app
redraws only those. Nothing here touches Textual or the socket, and the clock is passed in,
so the same events always give the same state.
"""
from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any, Callable

import orjson

from ksi_client.event_client import Event, compile_pattern

MAX_EVENTS = 2000        # event lines kept for the stream (and for re-filtering it)
MAX_COMPLETIONS = 200    # completions kept in their table, oldest dropped first
SUMMARY_CHARS = 160      # an event's data is shown as one line of JSON cut to this length

AGENTS, COMPLETIONS, STREAM = "agents", "completions", "stream"


@dataclass(slots=True)
class AgentRow:
    agent_id: str
    profile: str = "?"
    status: str = "?"
    session_id: str = ""
    messages_handled: int | None = None
    reason: str = ""


@dataclass(slots=True)
class CompletionRow:
    request_id: str
    status: str = "queued"
    model: str = ""
    agent_id: str = ""
    session_id: str = ""
    duration_ms: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None


@dataclass(frozen=True, slots=True)
class StreamLine:
    """One line of the event stream: a daemon event, or (event None) a note of the monitor's
    own, such as a lost connection, which every filter lets through."""
    seq: int
    timestamp: float
    event: str | None
    text: str


@dataclass(frozen=True, slots=True)
class Figures:
    """The metrics footer: rates need two samples, so the first ones have no events/s yet."""
    events_per_s: float | None = None
    worst_p99_ms: float | None = None
    worst_p99_event: str = ""
    connections: int | None = None
    events_total: int | None = None


class EventFilter:
    """Which event names the stream shows. A pattern with `*`, `?` or `[` follows the daemon's
    subscription rules (`agent:*`, `completion:re*`); a plain word matches any name that
    contains it, which is what someone typing `agent` expects. Empty shows everything."""

    def __init__(self, pattern: str = ""):
        self.pattern = pattern.strip()
        if not self.pattern:
            self._matches: Callable[[str], bool] = lambda name: True
        elif any(c in self.pattern for c in "*?["):
            self._matches = compile_pattern(self.pattern)
        else:
            word = self.pattern
            self._matches = lambda name: word in name

    def shows(self, line: StreamLine) -> bool:
        return line.event is None or self._matches(line.event)


def summary_of(data: Any) -> str:
    if data in (None, {}):
        return ""
    text = orjson.dumps(data, option=orjson.OPT_NON_STR_KEYS).decode()
    return text if len(text) <= SUMMARY_CHARS else text[:SUMMARY_CHARS - 1] + "…"


class MonitorState:
    def __init__(self, clock: Callable[[], float], max_events: int = MAX_EVENTS,
                 max_completions: int = MAX_COMPLETIONS):
        self.clock = clock
        self.agents: dict[str, AgentRow] = {}
        self.agents_unavailable = ""  # why agent:list could not be asked, if it could not
        self.completions: OrderedDict[str, CompletionRow] = OrderedDict()
        self.max_completions = max_completions
        self.events: deque[StreamLine] = deque(maxlen=max_events)
        self.events_seen = 0
        self.figures = Figures()
        self._next_seq = 0
        self._last_sample: tuple[float, int] | None = None

    # ---- the event stream -------------------------------------------------------------------

    def _add_line(self, timestamp: float, event: str | None, text: str) -> StreamLine:
        line = StreamLine(self._next_seq, timestamp, event, text)
        self._next_seq += 1
        self.events.append(line)
        return line

    def note(self, text: str) -> StreamLine:
        return self._add_line(self.clock(), None, text)

    def clear_history(self) -> None:
        """What `c` clears: the stream, the finished completions and the terminated agents;
        what is still running stays."""
        self.events.clear()
        self.agents = {a: row for a, row in self.agents.items() if row.status != "terminated"}
        for request_id in [r for r, row in self.completions.items() if is_finished(row.status)]:
            del self.completions[request_id]

    # ---- pushes -----------------------------------------------------------------------------

    def apply(self, event: Event) -> set[str]:
        """Take one push into the state; returns the parts that changed."""
        self.events_seen += 1
        timestamp = event.timestamp if isinstance(event.timestamp, (int, float)) \
            else self.clock()
        self._add_line(timestamp, event.event, summary_of(event.data))
        changed = {STREAM}
        data = event.data if isinstance(event.data, dict) else {}
        namespace = event.event.partition(":")[0]
        if namespace == "agent" and self._apply_agent_event(event.event, data):
            changed.add(AGENTS)
        elif namespace == "completion" and self._apply_completion_event(event.event, data):
            changed.add(COMPLETIONS)
        return changed

    def replace_agents(self, agents: list[dict]) -> bool:
        """The daemon's own list (agent:list). It leaves terminated agents out; those the
        monitor saw end stay on screen, marked, until `c`. Returns whether anything changed."""
        self.agents_unavailable = ""
        listed = {}
        for record in agents:
            agent_id = str(record.get("agent_id", ""))
            if not agent_id:
                continue
            row = listed[agent_id] = AgentRow(
                agent_id, str(record.get("profile") or "?"), str(record.get("status", "?")),
                str(record.get("session_id") or ""), _number(record.get("messages_handled")))
            known = self.agents.get(agent_id)
            if known is not None and known.status == row.status:
                row.reason = known.reason
        for agent_id, row in self.agents.items():
            if agent_id not in listed and row.status == "terminated":
                listed[agent_id] = row
        listed = dict(sorted(listed.items()))
        changed = listed != self.agents
        self.agents = listed
        return changed

    def _apply_agent_event(self, name: str, data: dict) -> bool:
        agent_id = data.get("agent_id")
        if not isinstance(agent_id, str) or name not in AGENT_STATUS_OF:
            return False
        row = self.agents.get(agent_id) or AgentRow(agent_id)
        self.agents[agent_id] = row
        row.status = str(data.get("status") or AGENT_STATUS_OF[name])
        row.reason = str(data.get("reason") or "")
        if name == "agent:spawned":
            row.profile = str(data.get("profile") or row.profile)
            row.session_id = str(data.get("session_id") or row.session_id)
        return True

    def _apply_completion_event(self, name: str, data: dict) -> bool:
        request_id = data.get("request_id")
        status = COMPLETION_STATUS_OF.get(name)
        if not isinstance(request_id, str) or status is None:
            return False
        row = self.completions.get(request_id)
        if row is None:
            row = self.completions[request_id] = CompletionRow(request_id)
            while len(self.completions) > self.max_completions:
                self.completions.popitem(last=False)
        if name == "completion:progress":
            # A late "queued" must not undo "done": only moves forward.
            if not is_finished(row.status):
                row.status = str(data.get("status") or row.status)
        elif name == "completion:retry":
            row.status = f"retry {data.get('attempt', '?')}"
        elif name == "completion:error":
            error = data.get("error") if isinstance(data.get("error"), dict) else {}
            row.status = f"error: {error.get('code', '?')}"
        else:
            row.status = status
        for key in ("model", "agent_id", "session_id"):
            if data.get(key):
                setattr(row, key, str(data[key]))
        if name == "completion:result":
            row.duration_ms = _number(data.get("duration_ms"))
            usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
            row.prompt_tokens = _number(usage.get("prompt_tokens"))
            row.completion_tokens = _number(usage.get("completion_tokens"))
            row.total_tokens = _number(usage.get("total_tokens"))
            if data.get("resumed"):
                row.status = "done (resumed)"
        return True

    # ---- figures ----------------------------------------------------------------------------

    def take_metrics(self, metrics: dict) -> Figures:
        """A system:metrics reply becomes the footer's figures; events/s is the change in
        `events_total` since the previous reply over the time between the two."""
        now = self.clock()
        total = metrics.get("events_total")
        rate = None
        if isinstance(total, int):
            previous = self._last_sample
            # A smaller total means the daemon restarted: start counting again.
            if previous is not None and total >= previous[1] and now > previous[0]:
                rate = (total - previous[1]) / (now - previous[0])
            self._last_sample = (now, total)
        worst_event, worst = "", None
        per_event = metrics.get("events") if isinstance(metrics.get("events"), dict) else {}
        for name, stats in per_event.items():
            p99 = stats.get("p99_ms") if isinstance(stats, dict) else None
            if isinstance(p99, (int, float)) and (worst is None or p99 > worst):
                worst_event, worst = name, float(p99)
        connections = metrics.get("connections")
        self.figures = Figures(rate, worst, worst_event,
                               connections if isinstance(connections, int) else None,
                               total if isinstance(total, int) else None)
        return self.figures

    def forget_rate(self) -> None:
        """After a lost connection the next sample may come from a new daemon."""
        self._last_sample = None


AGENT_STATUS_OF = {"agent:spawned": "running", "agent:status": "?",
                   "agent:terminated": "terminated"}
COMPLETION_STATUS_OF = {"completion:progress": "queued", "completion:retry": "retry",
                        "completion:result": "done", "completion:error": "error",
                        "completion:cancelled": "cancelled"}


def is_finished(status: str) -> bool:
    return status.startswith(("done", "error", "cancelled"))


def _number(value: Any) -> Any:
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None
