"""The agent plugin's own hook: another plugin may spread the agents over a cluster.

Added to the daemon by the agent plugin's `PluginMetadata(hookspecs=[...])`. The cluster plugin
implements it in cluster mode (docs/CLUSTER.md, "Agents"); without an implementation every agent
runs on this daemon, as always.
"""
from __future__ import annotations

from ...hookspecs import hookspec


@hookspec(firstresult=True)
def ksi_agent_cluster(config):
    """Return an `AgentCluster` (ksi_daemon/plugins/agent/cluster_seam.py), or None.

    Asked once, in the agent plugin's start-up; the implementing plugin must come earlier in
    plugin order (a lower priority) so that it has started. `config` is the whole configuration.
    """
