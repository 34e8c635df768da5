"""Class-style plugins: subclass BasePlugin, mark hooks with @hookimpl, expose `ksi_plugin`."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pluggy

from .core.hooks import log_and_skip, raise_error, refuse_or_skip  # noqa: F401 - the hooks' error policies
from .plugin_types import PluginCapabilities, PluginMetadata

hookimpl = pluggy.HookimplMarker("ksi")


class BasePlugin:
    """A plugin object. The daemon fills `config`, `data_dir` and `context` before it starts."""

    def __init__(self, metadata: PluginMetadata, capabilities: PluginCapabilities | None = None):
        self.metadata = metadata
        self.capabilities = capabilities or PluginCapabilities()
        self.config: dict[str, Any] = {}
        self.data_dir: Path | None = None
        self.context = None  # the PluginContext, set when the plugin is loaded
