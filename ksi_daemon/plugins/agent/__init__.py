"""The `agent` events: supervised agents with profiles, inboxes and sessions (being built)."""
from __future__ import annotations

from ...plugin_base import BasePlugin
from ...plugin_types import PluginCapabilities, PluginMetadata


class AgentPlugin(BasePlugin):
    def __init__(self):
        super().__init__(
            PluginMetadata(name="agent", version="0.1.0", priority=60,
                           description="Supervised AI agents", dependencies=["message"]),
            PluginCapabilities(event_namespaces=["agent"], provides_services=["agent"]))


ksi_plugin = AgentPlugin
