"""The `cluster` plugin: this daemon as one node of a cluster on NATS JetStream.

Loaded only when `cluster.nats_url` is set (KSI_CLUSTER_NATS_URL; plugin_manager.py's
OPTIONAL_BUILTINS): without it the daemon is the single daemon, and nothing imports nats. The
plugin owns the node's one NATS connection (node.py); other plugins reach the cluster through
events or declared seams, each answered with one object: the state plugin's `ksi_state_store`
(the KV store, kv_state.py), the conversation plugin's `ksi_conversation_store` (the stream of
turns, conversation_log.py), the agent plugin's `ksi_agent_store` (the KV bucket of
checkpoints, kv_agents.py) and `ksi_agent_cluster` (the agents' leases and the forwarding of
requests to their home nodes, leases.py), the message plugin's `ksi_message_bus` (the message
stream and agents' inbox consumers, message_streams.py) and the system plugin's
`ksi_event_bridge` (events across nodes, event_bridge.py). docs/CLUSTER.md has the design.
"""
from __future__ import annotations

from ...plugin_base import BasePlugin, hookimpl
from ...plugin_types import PluginCapabilities, PluginMetadata
from .conversation_log import JetStreamConversations
from .event_bridge import ClusterEventBridge
from .kv_agents import KvAgentStore
from .kv_state import KvStateStore
from .leases import AgentLeases
from .message_streams import JetStreamMessageBus
from .node import ClusterNode
from .state_audit import AuditStream


class ClusterPlugin(BasePlugin):
    def __init__(self):
        super().__init__(
            # Before the state (10) and message (20) plugins, which ask it for their stores at
            # start; the system plugin (0) asks for the event bridge when the daemon is ready.
            PluginMetadata(name="cluster", version="0.1.0", priority=5,
                           description="This daemon as a node of a cluster on NATS JetStream"),
            PluginCapabilities(event_namespaces=[], provides_services=["cluster"]))
        self.node: ClusterNode | None = None

    @hookimpl
    def ksi_startup(self, config, context):
        settings = config["cluster"]
        self.node = ClusterNode(settings, context.report_degraded)
        # The state plugin's `audit` setting (on unless turned off) holds in cluster mode too.
        audit_on = (config["plugins"].get("state") or {}).get("audit", True)
        audit_log = AuditStream(self.node, settings["audit_stream"], settings["replicas"],
                                settings["audit_keep_s"], settings["audit_keep_records"],
                                settings["request_timeout_s"]) if audit_on else None
        self.state_store = KvStateStore(self.node, settings["state_bucket"],
                                        settings["replicas"], settings["request_timeout_s"],
                                        audit_log)
        self.agent_store = KvAgentStore(self.node, settings["agent_bucket"], settings["replicas"],
                                        settings["request_timeout_s"])
        # After the agent store: it listens first, so its bucket exists when the leases' watch
        # of it begins.
        self.agent_leases = AgentLeases(self.node, settings)
        self.message_bus = JetStreamMessageBus(self.node, settings["replicas"],
                                               settings["request_timeout_s"])
        self.event_bridge = ClusterEventBridge(self.node, settings["replicas"],
                                               settings["request_timeout_s"])
        context.report_degraded(f"cluster: {self.node.last_error}")  # until JetStream answers

    @hookimpl
    def ksi_state_store(self, config):
        return self.state_store

    @hookimpl
    def ksi_agent_store(self, config):
        return self.agent_store

    @hookimpl
    def ksi_conversation_store(self, config, open_local_copy):
        settings = config["cluster"]
        return JetStreamConversations(self.node, open_local_copy(),
                                      settings["conversation_stream"], settings["replicas"],
                                      settings["request_timeout_s"])

    @hookimpl
    def ksi_agent_cluster(self, config):
        return self.agent_leases

    @hookimpl
    def ksi_message_bus(self, config):
        return self.message_bus

    @hookimpl
    def ksi_event_bridge(self, config):
        return self.event_bridge

    @hookimpl
    def ksi_ready(self, context):
        # Supervised and cancelled at shutdown: connecting, then nats-py's reconnections; the
        # leases' renewal, fence and sweep; this node's interest in other nodes' events.
        return [self.node.run(), *self.agent_leases.services(),
                self.event_bridge.refresh_forever()]

    @hookimpl
    def ksi_health_report(self):
        return {"cluster": {**self.node.health(), **self.agent_leases.health()}}

    @hookimpl
    async def ksi_shutdown(self, context):
        if self.node is not None:
            await self.agent_leases.close()
            await self.event_bridge.close()
            await self.node.close()


ksi_plugin = ClusterPlugin
