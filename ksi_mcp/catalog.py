"""Which of the daemon's tools this server offers, under the names the daemon gave them.

The daemon's `tools:list` (the tools plugin, docs/TOOLS.md) is the one place where event names
become tool names (`state:get` -> `state_get`) and where events are marked `explicit_only`
(internal and dangerous ones). This module only chooses among those tools; it never derives a
name itself, so the mapping cannot drift between the daemon and this server.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any

EVENT_SOURCE = "event"  # tools that are KSI events (others: "plugin:<name>", "mcp:<server>")


@dataclass(frozen=True, slots=True)
class Tool:
    event: str          # the KSI name: the event a call sends (or a plugin's tool name)
    model_name: str     # the MCP tool name
    description: str
    parameters: Mapping[str, Any]
    idempotent: bool
    explicit_only: bool


@dataclass(frozen=True, slots=True)
class Exposure:
    """`--allow` / `--deny` patterns (fnmatch on KSI event names, `state:*`).

    No allow pattern: every event tool that is not explicit_only. With allow patterns: only the
    tools they match. An explicit_only tool (`system:shutdown`, `state:clear`, internal events)
    only when an allow pattern is its exact name, so `--allow '*'` never exposes one by
    accident. A deny pattern wins over everything.

    `exactly` (an agent's tools) replaces both: those KSI names and nothing else.
    """
    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()
    exactly: frozenset[str] | None = None

    def exposes(self, tool: Tool) -> bool:
        name = tool.event
        if self.exactly is not None:
            return name in self.exactly
        if any(fnmatchcase(name, pattern) for pattern in self.deny):
            return False
        if tool.explicit_only:
            return name in self.allow
        return not self.allow or any(fnmatchcase(name, pattern) for pattern in self.allow)


@dataclass(frozen=True)
class Catalog:
    """The tools offered, in the daemon's order; two catalogs are equal when a host would see
    the same list."""
    tools: tuple[Tool, ...] = ()
    _by_name: dict[str, Tool] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_name", {tool.model_name: tool for tool in self.tools})

    @classmethod
    def from_tools_list(cls, reply: Mapping[str, Any], exposure: Exposure, *,
                        events_only: bool = True) -> Catalog:
        """The offered tools of a `tools:list` reply ({"tools": [TOOL, ...], "count": n}):
        its events only, for a server that can only send events (a socket client); every
        tool for one that runs them through `tools:execute` (the daemon's own plugin)."""
        offered = (tool for tool in _tools(reply.get("tools") or (), events_only)
                   if exposure.exposes(tool))
        return cls(tuple(offered))

    def find(self, model_name: str) -> Tool | None:
        return self._by_name.get(model_name)

    def offers_event(self, event: str) -> bool:
        return any(tool.event == event for tool in self.tools)

    @property
    def model_names(self) -> list[str]:
        return [tool.model_name for tool in self.tools]


def _tools(entries: Iterable[Any], events_only: bool) -> Iterable[Tool]:
    for entry in entries:
        if isinstance(entry, Mapping) and (entry.get("source") == EVENT_SOURCE
                                           or not events_only):
            yield Tool(event=str(entry["name"]), model_name=str(entry["model_name"]),
                       description=str(entry.get("description") or ""),
                       parameters=entry.get("parameters") or {"type": "object"},
                       idempotent=bool(entry.get("idempotent")),
                       explicit_only=bool(entry.get("explicit_only")))
