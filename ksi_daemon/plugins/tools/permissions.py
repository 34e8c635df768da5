"""Who may call which tool: the one seam per-namespace permissions will fill.

Today a tool that was resolved may be called by anybody: naming it (in a request or a profile)
is what allows it, and resolving already applied `explicit_only`.
"""
from __future__ import annotations

from .registry import Tool


def may_call(identity: str | None, tool: Tool) -> bool:
    """Whether `identity` (an agent id, or None for a client's own request) may call `tool`."""
    return True
