"""The `state` events: persistent namespaced key-value storage.

The plugin owns the events and their schemas; where the data lives is a `StateStore`
(store_seam.py), chosen once at start: SQLite (sqlite_state.py, docs/STATE.md) unless another
plugin supplies a store through the `ksi_state_store` hook (hookspecs.py), as the cluster plugin
does in cluster mode with a JetStream KV bucket (docs/CLUSTER.md).
"""
from __future__ import annotations

from ...event_system import event_handler
from ...plugin_base import BasePlugin, hookimpl
from ...plugin_types import PluginCapabilities, PluginMetadata
from . import hookspecs
from .models import (AuditRequest, ClearReply, ClearRequest, DeleteReply, GetReply, KeyRequest,
                     ListReply, ListRequest, SetReply, SetRequest, StateSettings)
from .sqlite_state import SqliteStateStore
from .store_seam import StateStore

# Writes are bounded by the store, not by a timer per request: SQLite's writer sweeps its queue
# against the daemon's event_timeout, the KV store bounds every request to NATS.
WRITER_DEADLINE = None


class StatePlugin(BasePlugin):
    def __init__(self):
        super().__init__(
            PluginMetadata(name="state", version="0.1.0", priority=10,
                           description="Persistent namespaced key-value state",
                           hookspecs=[hookspecs]),
            PluginCapabilities(event_namespaces=["state"], provides_services=["state"]))
        self.store: StateStore | None = None

    # ---- lifecycle ---------------------------------------------------------------------------

    @hookimpl
    async def ksi_startup(self, config, context):
        # (the guide's `plugins.state_service` is read into this section: config_guide.py)
        settings = StateSettings.model_validate(context.config or {})
        store = await context.hook("ksi_state_store").call_first(config=config)
        if store is None and config["cluster"]["nats_url"]:
            # A node that quietly kept its state in its own file would split the cluster's.
            raise RuntimeError("cluster mode is configured but no plugin supplied the cluster's "
                               "state store (is the cluster plugin disabled?)")
        store = store or SqliteStateStore(settings, config)
        await store.open(context.announce_all, context.report_degraded)
        self.store = store
        # The handlers call the store's methods: bound once here, not looked up per request.
        self._set, self._get, self._delete = store.set, store.get, store.delete
        self._list, self._clear, self._audit = store.list, store.clear, store.audit

    @hookimpl
    def ksi_ready(self, context):
        # Long-running services, supervised by the daemon and cancelled at shutdown.
        return self.store.services()

    @hookimpl
    def ksi_queue_depths(self):
        return self.store.queue_depths() if self.store is not None else {"writes_waiting": 0}

    @hookimpl
    async def ksi_shutdown(self, context):
        if self.store is not None:
            await self.store.close()

    @hookimpl
    def ksi_request_refused(self, event_name, error, connection):
        """A permission refusal, recorded beside the changes where the store has an audit."""
        if self.store is not None:
            self.store.record_refusal(event_name, error.message, connection)

    # ---- events (the store answers; see store_seam.py for what each may return) --------------

    @event_handler("state:set", returns=SetReply, timeout=WRITER_DEADLINE)
    def set(self, data: SetRequest, ctx):
        """Store a JSON value under (namespace, key); the reply comes after the commit."""
        return self._set(data, ctx)

    @event_handler("state:get", returns=GetReply, timeout=WRITER_DEADLINE)
    def get(self, data: KeyRequest):
        """Read a value; `found` is false for a key never set, deleted or expired."""
        return self._get(data)

    @event_handler("state:delete", returns=DeleteReply, timeout=WRITER_DEADLINE)
    def delete(self, data: KeyRequest, ctx):
        """Delete a key; `deleted` says whether it existed."""
        return self._delete(data, ctx)

    @event_handler("state:list", returns=ListReply, timeout=WRITER_DEADLINE)
    def list(self, data: ListRequest):
        """Keys of a namespace in order, optionally only those with a prefix."""
        return self._list(data)

    @event_handler("state:clear", returns=ClearReply, timeout=WRITER_DEADLINE)
    def clear(self, data: ClearRequest, ctx):
        """Delete every key of a namespace; `deleted` counts them."""
        return self._clear(data, ctx)

    @event_handler("state:audit", timeout=WRITER_DEADLINE)
    def audit(self, data: AuditRequest):
        """The append-only record of changes (when `plugins.state.audit` is on), oldest first."""
        return self._audit(data)


ksi_plugin = StatePlugin
