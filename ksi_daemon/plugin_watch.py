"""The watch mode (`daemon.watch_plugins`): plugin directories polled once a second
(`daemon.watch_period_s`).

A plugin file or package whose files changed (path, mtime or size) is reloaded; one that
appeared is loaded; one that went away keeps running until the daemon restarts. Polling, not
inotify: no new dependency, and a second's stat of a few files costs nothing. A change that
fails (a syntax error mid-edit) is logged once and the old version runs on; the next change of
the file is tried again.
"""
from __future__ import annotations

import asyncio
from pathlib import Path

import structlog

from .core.protocol import KSIError
from .plugin_files import fingerprint, plugin_entries, trusted_dirs
from .plugin_reload import PluginReloader

log = structlog.get_logger("ksi.plugins.watch")


class PluginWatcher:
    def __init__(self, reloader: PluginReloader, plugin_dirs: list[str], builtin_dir: Path,
                 period_s: float = 1.0):
        self.reloader, self.plugin_dirs, self.builtin_dir = reloader, plugin_dirs, builtin_dir
        self.period_s = period_s
        self.seen: dict[Path, tuple] = {}

    def scan(self) -> dict[Path, tuple]:
        """Every plugin of the watched directories, with its files' marks."""
        return {entry: fingerprint(entry)
                for directory in trusted_dirs(self.plugin_dirs, self.builtin_dir)
                for entry in plugin_entries(directory)}

    async def run(self) -> None:
        """The service: poll, and act on each change (a supervised task of the system plugin)."""
        self.seen = self.scan()
        log.info("watching_plugins", dirs=self.plugin_dirs, plugins=len(self.seen))
        while True:
            await asyncio.sleep(self.period_s)
            await self.poll()

    async def poll(self) -> None:
        now = self.scan()
        for entry, marks in now.items():
            if self.seen.get(entry) != marks:
                self.seen[entry] = marks  # tried once per change, whatever the outcome
                await self._take(entry)
        for entry in self.seen.keys() - now.keys():
            del self.seen[entry]
            log.warning("plugin_file_removed", path=str(entry),
                        detail="its plugin keeps running until the daemon restarts")

    async def _take(self, entry: Path) -> None:
        name = self.reloader.plugin_at(entry)
        try:
            if name is None:
                result = await self.reloader.load_new(entry)
            else:
                result = await self.reloader.reload(name)
        except KSIError as exc:
            log.error("plugin_change_not_taken", path=str(entry), error=exc.message,
                      details=exc.details)
            return
        except Exception:  # noqa: BLE001 - a bug of the reload must not end the watching
            log.exception("plugin_change_failed", path=str(entry))
            return
        log.info("plugin_change_taken", path=str(entry), plugin=result["plugin"],
                 version=result["version"], added=result["added"], removed=result["removed"])
