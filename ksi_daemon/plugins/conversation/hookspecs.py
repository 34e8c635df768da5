"""The conversation plugin's own hook: another plugin may supply the store `conversation:*` use.

Added to the daemon by the conversation plugin's `PluginMetadata(hookspecs=[...])`. The cluster
plugin implements it in cluster mode (docs/CLUSTER.md, "Conversations"); without an
implementation the store is SQLite.
"""
from __future__ import annotations

from ...hookspecs import hookspec


@hookspec(firstresult=True)
def ksi_conversation_store(config, open_local_copy):
    """Return a `ConversationStore` (conversation/store_seam.py) for `conversation:*`, or None.

    Asked once, in the conversation plugin's start-up; the implementing plugin must come earlier
    in plugin order (a lower priority). `config` is the whole configuration.
    `open_local_copy()` gives this node's SQLite copy for a shared store, a `LocalCopy`, not
    yet opened (the shared store opens it in its own `open` and closes it in its `close`). It
    lives in `var/db/conversations.cluster.db` and is emptied when opened: a cache the shared
    store refills, never mixed with a single daemon's `conversations.db`. The store is opened,
    used and closed by the conversation plugin alone.
    """
