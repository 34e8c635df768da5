"""The state plugin's own hook: another plugin may supply the store `state:*` uses.

Added to the daemon by the state plugin's `PluginMetadata(hookspecs=[...])`. The cluster plugin
implements it in cluster mode (docs/CLUSTER.md); without an implementation the store is SQLite.
"""
from __future__ import annotations

from ...hookspecs import hookspec


@hookspec(firstresult=True)
def ksi_state_store(config):
    """Return a `StateStore` (ksi_daemon/plugins/state/store_seam.py) for `state:*`, or None.

    Asked once, in the state plugin's start-up; the implementing plugin must come earlier in
    plugin order (a lower priority) so that it has started. `config` is the whole
    configuration. The store is opened, used and closed by the state plugin alone.
    """
