"""The single daemon's state store: SQLite, one writer thread with group commit.

A reply to a write means the write is committed (see docs/STATE.md for what survives a crash and
what survives power loss). Writes go through one writer thread with group commit; reads run
inline on the event loop on their own read connection, which WAL lets read the last commit
without waiting for writes in progress. The state plugin (__init__.py) calls these methods
from its handlers (the StateStore seam, store_seam.py).
"""
from __future__ import annotations

import asyncio
import time
from operator import itemgetter
from pathlib import Path

import orjson
import structlog

from ...protocol import KSIError
from .models import (GLOBAL, AuditRequest, ClearRequest, KeyRequest, ListRequest, SetRequest,
                     StateSettings)
from .store import (KnownVersions, StateReader, audit_in_order, clear_namespace, create_schema,
                    delete_value, get_in_order, list_in_order, prune_audit, purge_expired,
                    record_refusal, set_audit_retention, set_plain, set_value)
from .read_cache import ReadCache
from ...storage.plugin_database import PluginDatabase
from ...storage.sqlite_writer import SqliteWriter, WriterStopped, run_on_commit, settle

DB_FILE_NAME = "state.db"
AUDIT_PRUNE_EVERY_S = 60.0  # the audit's rows past its retention are forgotten this often
log = structlog.get_logger("ksi.plugin.state")


def database_path(settings: StateSettings, config: dict) -> Path:
    if settings.db_path:
        return Path(settings.db_path).expanduser()
    return Path(config["daemon"]["var_dir"]) / "db" / DB_FILE_NAME


class SqliteStateStore:
    """A StateStore (store_seam.py) on `var/db/state.db`."""

    def __init__(self, settings: StateSettings, config: dict):
        self.settings, self.audit_enabled = settings, settings.audit
        self.path = database_path(settings, config)
        self.deadline_s = config["daemon"]["event_timeout"]
        self.writer: SqliteWriter | None = None

    async def open(self, announce_all, report_degraded) -> None:
        settings = self.settings
        self.known = KnownVersions()  # the writer thread's, passed to every write
        self.database = PluginDatabase.open(
            self.path, name="state", synchronous=settings.synchronous,
            create_schema=create_schema, deadline_s=self.deadline_s,
            after_rollback=self.known.forget_all, on_commits=self._committed,
            report_degraded=report_degraded,
            max_page_count=settings.max_page_count)
        self.writer = self.database.writer
        self.announce_all = announce_all  # history records the source as "state"
        self.reader = StateReader(self.database.reader, self.path)
        self.cache = ReadCache(settings.read_cache_entries)
        # Per namespace, the clears queued or committing: until they commit, every read of the
        # namespace waits behind them in the writer's queue (see `get`).
        self.clearing: dict[str, int] = {}
        self.refusals_queued = 0  # audit rows of permission refusals not committed yet
        log.info("state_database_open", path=str(self.path),
                 synchronous=settings.synchronous.upper(), audit=settings.audit)

    def services(self) -> list:
        return [self._purge_expired_keys()]  # (the write deadlines: PluginDatabase)

    def queue_depths(self) -> dict:
        return {"writes_waiting": self.writer.waiting() if self.writer is not None else 0}

    async def close(self) -> None:
        if self.writer is not None:
            await self.database.close()

    async def _purge_expired_keys(self) -> None:
        settings = self.settings
        if self.audit_enabled:
            await self._write(set_audit_retention, settings.audit_keep_s, settings.audit_keep_rows)
        next_prune = 0.0
        while True:
            await asyncio.sleep(settings.purge_interval_s)
            if self.audit_enabled and time.monotonic() >= next_prune:
                next_prune = time.monotonic() + AUDIT_PRUNE_EVERY_S
                try:
                    await self._write(prune_audit, settings.audit_keep_s,
                                      settings.audit_keep_rows)
                except KSIError:
                    return
            try:
                purged = await self._write(purge_expired, self.known, self._audit_of(None),
                                           on_commit=self._forget_purged)
            except KSIError:
                return
            if purged:
                self.announce_all("state:changed", [
                    (None, {"namespace": namespace, "key": key, "version": version,
                            "op": "expire"}) for namespace, key, version in purged])

    # ---- events ------------------------------------------------------------------------------

    def set(self, data: SetRequest, ctx):
        """Store a JSON value under (namespace, key); the reply comes after the commit."""
        # The hot write: a plain handler returning its owed reply (ctx.reply_later()), which the
        # writer settles at the commit and which writes the reply right then. A coroutine here
        # would cost a task per write on the event loop, a future a done-callback more
        # (bench/RESULTS.md, "State"). The cache and `state:changed` follow the commit in
        # `_committed`, one call per commit.
        namespace, key = data.get("namespace", GLOBAL), data["key"]
        ttl_s, if_version = data.get("ttl_s"), data.get("if_version")
        value_json = _dumps(data["value"]).decode()
        expires_at = None if ttl_s is None else time.time() + ttl_s
        reply = ctx.reply_later()  # written when the writer settles it, after the commit
        if if_version is None:  # combinable with its group (its audit row too)
            self.writer.submit(set_plain, self.known, namespace, key, value_json, expires_at,
                               self._audit_of(ctx), future=reply)
        else:
            self.writer.submit(set_value, self.known, namespace, key, value_json, expires_at,
                               if_version, self._audit_of(ctx), future=reply)
        # Counted after the submit succeeded; the commit cannot be handled before: that happens
        # on the event loop, which is busy with this very line.
        self.cache.write_queued((namespace, key))
        return reply

    def _committed(self, outcomes: list) -> None:
        """The writer's `on_commits` hook, on the loop after each commit: the read cache and
        `state:changed` follow the commits, in commit order, even for requests that gave up
        meanwhile, and each write is answered before the `state:changed` that carries its
        correlation id (PROTOCOL.md §1's rule for accepted requests, kept by writes too). Sets
        are handled here inline (the cache, then the reply, in one pass; a run of sets'
        `state:changed` follows their replies); other writes are answered, then followed by
        their own on_commit callbacks."""
        try:
            self._follow_commit(outcomes)
        except BaseException:
            # A write whose cache entry was not updated could be read back stale: drop them all
            # (the writer logs the error and still answers every write).
            self.cache.forget_all()
            raise

    def _follow_commit(self, outcomes: list) -> None:
        cache, changed = self.cache, []
        for (op, args, reply, on_commit, _queued_at), result, error in outcomes:
            if op is set_plain or op is set_value:
                namespace, key, value_json, expires_at = _written(args)
                if error is not None:
                    cache.write_done((namespace, key), None)
                    settle(reply, None, error)
                    continue
                version = result["version"]
                cache.write_done((namespace, key), (value_json, version, expires_at))
                reply.set_result(result)  # (an owed reply: settling it again does nothing)
                changed.append((reply.correlation_id, {"namespace": namespace, "key": key,
                                                       "version": version, "op": "set"}))
                continue
            if changed:  # announced first: `state:changed` keeps the commit order
                self.announce_all("state:changed", changed)
                changed = []
            settle(reply, result, error)  # (within this call: no read can come in between)
            if on_commit is not None:
                run_on_commit(on_commit, result, error)
        if changed:
            self.announce_all("state:changed", changed)

    def get(self, data: KeyRequest):
        """Read a value; `found` is false for a key never set, deleted or expired."""
        namespace, key = cache_key = (data.get("namespace", GLOBAL), data["key"])
        if cache_key in self.cache.pending or namespace in self.clearing:
            # A write of this key is queued or committing (maybe sent just before on this very
            # connection): the read waits behind it in the writer's queue and is answered after
            # its commit, so it sees it. A sync handler's future: no task, no context.
            return self.writer.submit(get_in_order, namespace, key)
        entry = self.cache.get(cache_key)
        if entry is None:
            entry = self.reader.get(namespace, key)
            if entry is None:
                return {"namespace": namespace, "key": key, "found": False, "value": None,
                        "version": None}
            self.cache.fill(cache_key, *entry)
        return {"namespace": namespace, "key": key, "found": True, "value": _loads(entry[0]),
                "version": entry[1]}

    def delete(self, data: KeyRequest, ctx):
        """Delete a key; `deleted` says whether it existed."""
        # A plain handler like `set`: the delete is queued now, in arrival order, so a request
        # sent after it on the connection sees the key gone (a task would queue it later).
        namespace, key = data.get("namespace", GLOBAL), data["key"]
        cache, cache_key = self.cache, (namespace, key)

        def committed(version, error):  # on the loop at the commit, even if the request gave up
            cache.write_done(cache_key, None)  # the key is gone: forget its cache entry
            if error is None and version is not None:
                ctx.announce("state:changed", {"namespace": namespace, "key": key,
                                               "version": version, "op": "delete"})
        reply = ctx.reply_later()
        self.writer.submit(delete_value, self.known, namespace, key, self._audit_of(ctx),
                           on_commit=committed, future=SettledAs(reply, _deleted))
        cache.write_queued(cache_key)  # after the submit succeeded, before `committed` can run
        return reply

    def list(self, data: ListRequest):
        """Keys of a namespace in order, optionally only those with a prefix."""
        if self.cache.pending or self.clearing:
            # Some write is queued or committing: the list waits behind it (which namespace it
            # writes is not tracked per prefix; lists are rare next to the writes they follow).
            return self.writer.submit(list_in_order, data.namespace, data.prefix, data.limit)
        keys = self.reader.keys(data.namespace, data.prefix, data.limit)
        return {"keys": keys, "count": len(keys)}

    def clear(self, data: ClearRequest, ctx):
        """Delete every key of a namespace; `deleted` counts them."""
        namespace, clearing = data.namespace, self.clearing

        def committed(deleted, error):  # announced on commit, even if the request gave up
            left = clearing[namespace] - 1
            if left:
                clearing[namespace] = left
            else:
                del clearing[namespace]
            self.cache.forget_all()
            if error is None and deleted:
                ctx.announce("state:changed", {"namespace": namespace, "key": None,
                                               "version": None, "op": "clear",
                                               "deleted": deleted})
        reply = ctx.reply_later()
        self.writer.submit(clear_namespace, self.known, namespace, self._audit_of(ctx),
                           on_commit=committed, future=SettledAs(reply, _cleared))
        clearing[namespace] = clearing.get(namespace, 0) + 1  # after the submit succeeded
        return reply

    def audit(self, data: AuditRequest):
        """The append-only record of changes (when `plugins.state.audit` is on), oldest first."""
        # as `list`: behind the writes queued before it (refusals recorded included)
        if self.cache.pending or self.clearing or self.refusals_queued:
            return self.writer.submit(audit_in_order, self.audit_enabled, data.namespace,
                                      data.key, data.limit)
        entries = self.reader.audit(data.namespace, data.key, data.limit)
        return {"enabled": self.audit_enabled, "entries": entries, "count": len(entries)}

    # ---- helpers -----------------------------------------------------------------------------

    async def _write(self, op, *args, on_commit=None):
        """Queue a write and wait for its commit (see SqliteWriter.submit).

        `on_commit(result, error)` runs on the loop as soon as the commit is known, before this
        request resumes and even if it gave up meanwhile (a cancelled wait does not cancel the
        write): the read cache follows the commits, not the requests. A write of one key must
        also count itself in the read cache (`cache.write_queued`) once submitted, and settle it
        (`cache.write_done`) in `on_commit`.
        """
        return await self.writer.submit(op, *args, on_commit=on_commit)

    def _forget_purged(self, result, error) -> None:
        for namespace, key, _version in result or ():
            self.cache.forget((namespace, key))

    def _audit_of(self, ctx):
        """Who asked: (peer_pid, peer_uid, correlation_id, agent_id), None with the audit off."""
        if not self.audit_enabled:
            return None
        if ctx is None:  # the daemon's own write (the expiry sweep)
            return None, None, None, None
        connection = ctx.connection  # a core Connection, or None for an event a plugin emitted
        if connection is None:
            return None, None, ctx.correlation_id, ctx.agent_id
        return connection.peer_pid, connection.peer_uid, ctx.correlation_id, ctx.agent_id


    def record_refusal(self, event_name, message, connection) -> None:
        """A permission refusal, recorded beside the changes (a write of its own, not waited
        for: the refusal is answered already)."""
        if not self.audit_enabled or self.writer is None:
            return
        who = (connection.peer_pid, connection.peer_uid, None, None) if connection is not None \
            else (None, None, None, None)
        try:
            self.writer.submit(record_refusal, event_name, message, who,
                               on_commit=self._refusal_recorded)
        except WriterStopped:
            return
        self.refusals_queued += 1

    def _refusal_recorded(self, _result, _error) -> None:
        self.refusals_queued -= 1


class SettledAs:
    """Settles an owed reply with `shape(result)`: for writes whose op's result is not the reply
    (a delete's op gives the version the key had, its reply says whether it existed)."""
    __slots__ = ("reply", "shape")

    def __init__(self, reply, shape):
        self.reply, self.shape = reply, shape

    def done(self) -> bool:
        return self.reply.done()

    def set_result(self, result) -> None:
        self.reply.set_result(self.shape(result))

    def set_exception(self, exc: BaseException) -> None:
        self.reply.set_exception(exc)


def _deleted(version: int | None) -> dict:
    return {"deleted": version is not None}


def _cleared(deleted: int) -> dict:
    return {"deleted": deleted}

_loads, _dumps = orjson.loads, orjson.dumps
# (namespace, key, value_json, expires_at) of a set_plain or set_value write's args
_written = itemgetter(1, 2, 3, 4)
