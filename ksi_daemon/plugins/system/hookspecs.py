"""The system plugin's own hook: another plugin may carry this node's events to other nodes.

Added to the daemon by the system plugin's `PluginMetadata(hookspecs=[...])`. The cluster
plugin implements it in cluster mode (docs/CLUSTER.md, "Events across nodes"); without an
implementation `system:subscribe` sees this daemon's events only, as it always has.
"""
from __future__ import annotations

from ...hookspecs import hookspec


@hookspec(firstresult=True)
def ksi_event_bridge(config):
    """Return an `EventBridge` (ksi_daemon/plugins/system/bridge_seam.py), or None.

    Asked once, when the daemon is ready (every plugin has started); `config` is the whole
    configuration. The system plugin opens it with this node's side (`LocalEvents`).
    """
