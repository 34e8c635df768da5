"""The agent plugin's own hook: another plugin may supply a shared store of agent checkpoints.

Added to the daemon by the agent plugin's `PluginMetadata(hookspecs=[...])`. The cluster plugin
implements it in cluster mode (docs/CLUSTER.md, "Agent checkpoints").
"""
from __future__ import annotations

from ...hookspecs import hookspec


@hookspec(firstresult=True)
def ksi_agent_store(config):
    """Return a shared `AgentStore` (agent/store_seam.py), or None (the single daemon).

    Asked once, in the agent plugin's start-up; the implementing plugin must come earlier in
    plugin order. With one, the agent plugin writes each agent's checkpoint to it after every
    change of the agent's rows in agents.db (its own store, kept as always). The shared store's
    lifecycle (connecting, reconnecting) is its plugin's; the agent plugin only calls it.
    """
