"""The state helpers of AsyncClient: the persistent key-value store of the state plugin.

    version = await client.set_state("greeting", {"text": "hi"}, namespace="demo")
    value = await client.get_state("greeting", namespace="demo")     # {"text": "hi"}
    keys = await client.list_state(namespace="demo", prefix="gr")   # ["greeting"]
    await client.delete_state("greeting", namespace="demo")         # True

A write's reply means it is committed. Values keep their JSON type. For compare-and-set, pass
`if_version` to set_state (KSIConflictError when the key moved on); `emit("state:get", ...)`
gives the version along with the value.
"""
from __future__ import annotations

from typing import Any

from ._data import without_none

DEFAULT_NAMESPACE = "global"


class StateHelpers:
    """Mixed into AsyncClient (an EventClient): uses its emit()."""

    async def get_state(self, key: str, default: Any = None, *,
                        namespace: str = DEFAULT_NAMESPACE) -> Any:
        """The value stored under `key`, or `default` when it was never set, was deleted or
        has expired."""
        reply = await self.emit("state:get", {"key": key, "namespace": namespace})
        return reply["value"] if reply["found"] else default

    async def set_state(self, key: str, value: Any, *, namespace: str = DEFAULT_NAMESPACE,
                        ttl_s: float | None = None, if_version: int | None = None) -> int:
        """Store `value` (any JSON); returns the key's new version. `ttl_s` makes it expire;
        `if_version` writes only if the key is at that version (0: only if absent)."""
        reply = await self.emit("state:set", without_none(
            key=key, value=value, namespace=namespace, ttl_s=ttl_s, if_version=if_version))
        return reply["version"]

    async def delete_state(self, key: str, *, namespace: str = DEFAULT_NAMESPACE) -> bool:
        """Delete `key`; True if it existed."""
        return (await self.emit("state:delete", {"key": key, "namespace": namespace}))["deleted"]

    async def list_state(self, *, namespace: str = DEFAULT_NAMESPACE, prefix: str = "",
                         limit: int | None = None) -> list[str]:
        """The keys of a namespace in order, only those starting with `prefix` if given."""
        reply = await self.emit("state:list", without_none(
            namespace=namespace, prefix=prefix, limit=limit))
        return reply["keys"]
