"""The message plugin's own hook: another plugin may carry the messages between nodes.

Added to the daemon by the message plugin's `PluginMetadata(hookspecs=[...])`. The cluster
plugin implements it in cluster mode (docs/CLUSTER.md, "Messages"); without an implementation
the message plugin keeps topics, retention and inboxes on this node (docs/MESSAGES.md).
"""
from __future__ import annotations

from ...hookspecs import hookspec


@hookspec(firstresult=True)
def ksi_message_bus(config):
    """Return a `MessageBus` (ksi_daemon/plugins/message/bus_seam.py), or None.

    Asked once, in the message plugin's start-up; the implementing plugin must come earlier in
    plugin order (a lower priority) so that it has started. `config` is the whole
    configuration. The bus is opened, used and closed by the message plugin alone.
    """
