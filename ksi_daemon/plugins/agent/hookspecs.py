"""The agent plugin's own hooks: another plugin may keep the agents' checkpoints where every node
reads them, and spread the agents over a cluster.

Added to the daemon by the agent plugin's `PluginMetadata(hookspecs=[...])`. The cluster plugin
implements both in cluster mode (docs/CLUSTER.md, "Agent checkpoints" and "Agents"); without
them every agent runs on this daemon, with agents.db its only store, as always.
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


@hookspec(firstresult=True)
def ksi_agent_cluster(config):
    """Return an `AgentCluster` (agent/cluster_seam.py), or None (the single daemon).

    Asked once, in the agent plugin's start-up, after `ksi_agent_store`; the implementing plugin
    must come earlier in plugin order. With one, each agent runs on the node holding its lease,
    requests for an agent of another node are forwarded there, and a checkpoint write the
    shared store refuses (another node resumed the agent) stops the agent here.
    """
