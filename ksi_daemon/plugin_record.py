"""One plugin as the daemon sees it: what it is, its state, and what `system:plugins` shows."""
from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from .plugin_context import PluginContext
from .plugin_types import PluginCapabilities, PluginMetadata


class PluginRecord:
    """One plugin as the daemon sees it; `as_status()` is what system:plugins shows."""

    def __init__(self, name: str, source: str):
        self.name, self.source = name, source
        self.version, self.description = "0.0.0", ""
        self.state, self.error = "loading", None
        self.obj: Any = None
        self.metadata = PluginMetadata(name=name)
        self.capabilities = PluginCapabilities()
        self.events: list[str] = []
        self.hooks: list[str] = []
        self.load_ms = 0.0
        self.started = False
        self.config: dict = {}
        self.data_dir: Path | None = None
        self.context: PluginContext | None = None
        self.handler_errors = 0
        self.last_handler_error: str | None = None
        self.where: str | None = None  # file:line where its failure arose, when one did
        self.degraded: str | None = None  # see PluginContext.report_degraded
        self.services: list[asyncio.Task] = []  # what its ksi_ready returned, supervised
        self.reload_error: str | None = None  # why its last reload failed (plugin_reload.py)
        self.reloads = 0

    def note_handler_error(self, event: str, exc: BaseException) -> None:
        self.handler_errors += 1
        self.last_handler_error = f"{event}: {type(exc).__name__}: {exc}"

    def as_status(self) -> dict:
        return {"name": self.name, "version": self.version, "state": self.state,
                "error": self.error or self.last_handler_error, "events": self.events,
                "hooks": self.hooks, "load_ms": round(self.load_ms, 3), "source": self.source,
                "priority": self.metadata.priority, "dependencies": self.metadata.dependencies,
                "handler_errors": self.handler_errors, "degraded": self.degraded,
                "where": self.where, "reloads": self.reloads,
                "reload_error": self.reload_error}
