"""Every hook of ksi_daemon/hookspecs.py in one class-style plugin, each leaving a trace.

Lifecycle hooks append their name to `journal.txt` in the plugin's data dir
(`var/plugins/hooks_tour/`), which can be read after the daemon exits; `hooks_tour:report`
tells which hooks ran while the daemon is up. Config section: `plugins.hooks_tour`.
"""
from __future__ import annotations

import asyncio

from ksi_daemon.plugin_base import BasePlugin, hookimpl
from ksi_daemon.plugin_types import PluginCapabilities, PluginMetadata
from ksi_daemon.protocol import FORBIDDEN, KSIError


class HooksTour(BasePlugin):
    def __init__(self):
        super().__init__(
            PluginMetadata(name="hooks_tour", version="1.0.0",
                           description="Implements every hook of hookspecs.py",
                           dependencies=["system"],  # starts after system, stops before it
                           priority=50),
            # Names answered by ksi_handle_event; listing them makes system:discover show them.
            PluginCapabilities(commands=["hooks_tour:report", "hooks_tour:echo"]))
        self.hooks_ran: list[str] = []
        self.heartbeats = 0
        self.requests_seen = 0

    def _ran(self, hook: str, journal: bool = False) -> None:
        if hook not in self.hooks_ran:
            self.hooks_ran.append(hook)
        if journal:
            with open(self.data_dir / "journal.txt", "a", encoding="utf-8") as file:
                file.write(hook + "\n")

    # ---- lifecycle ---------------------------------------------------------------------------

    @hookimpl
    def ksi_startup(self, config, context):
        # config is the whole daemon configuration; context.config is plugins.hooks_tour only.
        self.interval_s = float(context.config.get("heartbeat_s", 0.05))
        self.blocked = set(context.config.get("blocked_events", []))
        (self.data_dir / "journal.txt").write_text("", encoding="utf-8")  # one journal per run
        self._ran("ksi_startup", journal=True)

    @hookimpl
    async def ksi_ready(self, context):
        self._ran("ksi_ready", journal=True)
        # The daemon awaits this hook, then runs the coroutine it returns as a supervised
        # service task (a crash marks the plugin failed), cancelled at shutdown.
        return self.heartbeat()

    async def heartbeat(self):
        while True:
            await asyncio.sleep(self.interval_s)
            self.heartbeats += 1

    @hookimpl
    def ksi_stopping(self, context):
        self._ran("ksi_stopping", journal=True)

    @hookimpl
    async def ksi_shutdown(self, context):  # any hook may be async; the daemon awaits it
        self._ran("ksi_shutdown", journal=True)

    # ---- events ------------------------------------------------------------------------------

    @hookimpl
    def ksi_handle_event(self, event_name, data, context):
        self._ran("ksi_handle_event")
        if event_name == "hooks_tour:report":
            return {"hooks_ran": self.hooks_ran, "heartbeats": self.heartbeats,
                    "requests_seen": self.requests_seen}
        if event_name == "hooks_tour:echo":
            return {"echo": data}
        return None  # not ours: the next plugin tries, then the reply is unknown_event

    @hookimpl
    def ksi_pre_event(self, event_name, data, context):
        self._ran("ksi_pre_event")
        self.requests_seen += 1
        if event_name in self.blocked:
            raise KSIError(FORBIDDEN, f"{event_name} is blocked by plugins.hooks_tour")
        if event_name == "hooks_tour:echo":
            return {**data, "seen_by_pre_event": True}  # replaces the data the handler gets
        return None  # keep the data as it is

    @hookimpl
    def ksi_post_event(self, event_name, data, result, context):
        self._ran("ksi_post_event")
        if event_name == "hooks_tour:echo":
            return {**result, "seen_by_post_event": True}  # replaces the reply data
        return None


ksi_plugin = HooksTour
