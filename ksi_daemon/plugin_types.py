"""Plain descriptions of a plugin, as the seeds' examples construct them."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class PluginMetadata:
    """Who a plugin is and where it goes in the start order.

    Order is: declared `dependencies` first (topologically), then lower `priority`, then `name`.
    `hookspecs`: modules (or classes) of hookspecs this plugin defines for other plugins to
    implement, its own extension points; the plugin manager adds them (pluggy's `add_hookspecs`)
    before any plugin registers, and the plugin calls them with `context.hook(name)`.
    """
    name: str
    version: str = "0.0.0"
    description: str = ""
    author: str = ""
    dependencies: list[str] = field(default_factory=list)
    priority: int = 100
    hookspecs: list = field(default_factory=list)


@dataclass
class PluginCapabilities:
    """What a plugin offers. `commands` are event names answered by its `ksi_handle_event`.

    `event_namespaces` are the namespaces of its events: if the plugin fails, names there that
    nobody answers get `unavailable` (naming the plugin) instead of `unknown_event`.
    `internals`: the plugin is part of the daemon's machinery and needs the router, the plugin
    manager and the daemon (`context.internals`); granted to built-in plugins only.
    """
    event_namespaces: list[str] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)
    provides_services: list[str] = field(default_factory=list)
    internals: bool = False
