"""Plain descriptions of a plugin, as the seeds' examples construct them."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class PluginMetadata:
    """Who a plugin is and where it goes in the start order.

    Order is: declared `dependencies` first (topologically), then lower `priority`, then `name`.
    """
    name: str
    version: str = "0.0.0"
    description: str = ""
    author: str = ""
    dependencies: list[str] = field(default_factory=list)
    priority: int = 100


@dataclass
class PluginCapabilities:
    """What a plugin offers. `commands` are event names answered by its `ksi_handle_event`."""
    event_namespaces: list[str] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)
    provides_services: list[str] = field(default_factory=list)
