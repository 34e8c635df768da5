"""Schemas of the system events; system:discover shows them to clients as JSON Schema."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DiscoverRequest(Request):
    namespace: str | None = Field(None, description="only events of this namespace")


class HelpRequest(Request):
    event: str = Field(description="the event to describe, e.g. state:set")


class PatternsRequest(Request):
    patterns: list[str] = Field(min_length=1, description="'*', 'ns:*' or fnmatch patterns")


class UnsubscribeRequest(Request):
    patterns: list[str] | None = Field(None, description="patterns to drop; none: all")


class EventHistoryRequest(Request):
    limit: int = Field(100, ge=0, le=100_000, description="at most this many, newest last")
    pattern: str | None = Field(None, description="only events matching this pattern")


class MetricsRequest(Request):
    format: Literal["json", "prometheus"] = Field(
        "json", description='"prometheus": the Prometheus text format, as `text`')
    memory_by_plugin: bool = Field(
        False, description="trace Python allocations for sample_s and attribute them to "
                           "plugins (slows the daemon while it traces)")
    sample_s: float = Field(1.0, ge=0.05, le=30, description="how long memory is traced")


class ShutdownRequest(Request):
    timeout_s: float | None = Field(None, ge=0, le=3600,
                                    description="how long in-flight work may take to finish")


class ReloadRequest(Request):
    plugin: str = Field(description="the plugin to reload, as system:plugins names it")


class ReloadReply(BaseModel):
    plugin: str
    version: str = Field(description="the version now answering")
    previous_version: str | None
    events: list[str] = Field(description="the events it answers now")
    added: list[str] = Field(description="events the old version did not answer")
    removed: list[str] = Field(description="events it no longer answers (unknown_event)")
    waited_for: int = Field(description="requests the old version was answering at the swap")
    unfinished: int = Field(description="of those, still running on the old version after "
                                        "daemon.shutdown_timeout (they finish there)")


class PluginCounts(BaseModel):
    active: int
    failed: int
    degraded: int = Field(0, description="plugins running but failing at something they need")


class DegradedPlugin(BaseModel):
    plugin: str
    reason: str


class FailedPlugin(BaseModel):
    plugin: str
    error: str = Field(description="the first line of the reason it failed")
    where: str = Field(description="file:line where the failure arose, else the plugin's source")


class ClusterHealth(BaseModel):
    node_id: str
    nats_url: str
    reachable: bool = Field(description="connected to a NATS server")
    jetstream: bool = Field(description="JetStream answers and the state bucket is in use")
    since: float = Field(description="when this last changed (seconds since the epoch)")
    error: str | None = Field(description="why not, while it is not")


class HealthReply(BaseModel):
    status: str = Field(description='"healthy", or "degraded" while a plugin has failed')
    uptime_s: float
    version: str
    pid: int
    plugins: PluginCounts
    connections: int
    failed_plugins: list[FailedPlugin] = Field(default_factory=list)
    degraded: list[DegradedPlugin] = Field(default_factory=list)
    cluster: ClusterHealth | None = Field(None, description="in cluster mode only "
                                          "(docs/CLUSTER.md)")


class EventDescription(BaseModel):
    event: str
    summary: str
    parameters: dict[str, Any]
    plugin: str
    internal: bool = Field(False, description="only plugins may send it; a client gets "
                                              "`forbidden` (absent when false)")
    streams: bool = Field(False, description="its pushes are its answer as it streams: they come "
                                             "before its reply, not after (absent when false)")


class DiscoverReply(BaseModel):
    events: list[EventDescription]
    count: int


class PluginStatus(BaseModel):
    name: str
    version: str
    state: str
    error: str | None
    where: str | None = Field(None, description="file:line where its failure arose, if it did")
    events: list[str]
    hooks: list[str]
    load_ms: float
    reloads: int = Field(0, description="times it was reloaded (system:reload, watch mode)")
    reload_error: str | None = Field(None, description="why its last reload failed; the "
                                                       "version shown kept running")


class PluginsReply(BaseModel):
    plugins: list[PluginStatus]


class PatternsReply(BaseModel):
    patterns: list[str]
