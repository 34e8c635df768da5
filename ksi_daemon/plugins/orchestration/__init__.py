"""The `orchestration` events: multi-agent debates and collaborations (being built)."""
from __future__ import annotations

from ...plugin_base import BasePlugin
from ...plugin_types import PluginCapabilities, PluginMetadata


class OrchestrationPlugin(BasePlugin):
    def __init__(self):
        super().__init__(
            PluginMetadata(name="orchestration", version="0.1.0", priority=70,
                           description="Multi-agent orchestration", dependencies=["agent"]),
            PluginCapabilities(event_namespaces=["orchestration"]))


ksi_plugin = OrchestrationPlugin
