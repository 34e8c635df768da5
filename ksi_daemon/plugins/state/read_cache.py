"""A bounded in-memory copy of recently read or written keys, kept in step with the commits.

Why: a cached `state:get` costs a dict lookup instead of an SQLite query and a JSON decode, which
is most of what the event costs beyond the router. Correctness rests on two rules, both applied
on the event loop, in commit order:

- a committed write updates (or removes) its entry *before* its request resumes, from a done
  callback on the commit future, whether or not the request is still waiting;
- a read that missed fills the cache only when no write to that key is queued or committing, so a
  value read from SQLite can never be overwritten later by an older, still-pending update.

Only the daemon writes the database (migrate-state only inserts keys that did not exist, which
are never cached because misses are not cached), so the cache cannot go stale behind its back.
"""
from __future__ import annotations

import time

Key = tuple  # (namespace, key)


class ReadCache:
    def __init__(self, max_entries: int):
        self.max_entries = max_entries
        self._entries: dict[Key, tuple] = {}  # (value as JSON text, version, expires_at)
        # Writes of each key queued or committing, not yet followed here. Public: `state:get`
        # reads it inline to decide whether a read must wait in the writer's queue.
        self.pending: dict[Key, int] = {}

    def get(self, key: Key) -> tuple | None:
        entry = self._entries.get(key)
        if entry is not None and entry[2] is not None and entry[2] <= time.time():
            del self._entries[key]
            return None
        return entry

    def fill(self, key: Key, value, version: int, expires_at: float | None) -> None:
        if self.max_entries and key not in self.pending:
            self._store(key, (value, version, expires_at))

    def write_queued(self, key: Key) -> None:
        self.pending[key] = self.pending.get(key, 0) + 1

    def write_done(self, key: Key, entry: tuple | None) -> None:
        """The write of `key` committed (entry: its new value) or failed/deleted it (None)."""
        pending = self.pending
        left = pending[key] - 1
        if left:
            pending[key] = left
        else:
            del pending[key]
        entries = self._entries
        if entry is None or not self.max_entries:
            entries.pop(key, None)
        elif key in entries or len(entries) < self.max_entries:  # the hot case, inline
            entries[key] = entry
        else:
            self._store(key, entry)

    def forget(self, key: Key) -> None:
        self._entries.pop(key, None)

    def forget_all(self) -> None:
        self._entries.clear()

    def _store(self, key: Key, entry: tuple) -> None:
        entries = self._entries
        if len(entries) >= self.max_entries and key not in entries:
            del entries[next(iter(entries))]  # the oldest entry
        entries[key] = entry

    def __len__(self) -> int:
        return len(self._entries)
