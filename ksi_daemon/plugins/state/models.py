"""Schemas of the state events; system:discover shows them to clients as JSON Schema."""
from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

MAX_KEY_CHARS = 1024
MAX_NAMESPACE_CHARS = 256
MAX_TTL_S = 10 * 365 * 24 * 3600.0
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _printable(text: str) -> str:
    found = _CONTROL.search(text)
    if found:
        raise ValueError(f"must not contain control characters (found {found.group()!r} at "
                         f"position {found.start()})")
    return text


Key = Annotated[str, Field(min_length=1, max_length=MAX_KEY_CHARS,
                           description="the key (no control characters)"),
                AfterValidator(_printable)]
Namespace = Annotated[str, Field(min_length=1, max_length=MAX_NAMESPACE_CHARS,
                                 description="keys are unique per namespace"),
                      AfterValidator(_printable)]
Prefix = Annotated[str, Field(max_length=MAX_KEY_CHARS, description="only keys starting so"),
                   AfterValidator(_printable)]


class Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SetRequest(Request):
    key: Key
    value: Any = Field(description="any JSON value; it comes back with its type unchanged")
    namespace: Namespace = "global"
    ttl_s: float | None = Field(None, gt=0, le=MAX_TTL_S,
                                description="seconds until the key expires")
    if_version: int | None = Field(None, ge=0, description="write only if the key is at this "
                                   "version (0: only if absent); else `conflict`")


class KeyRequest(Request):
    key: Key
    namespace: Namespace = "global"


class ListRequest(Request):
    namespace: Namespace = "global"
    prefix: Prefix = ""
    limit: int = Field(1000, ge=1, le=100_000, description="at most this many keys, in order")


class ClearRequest(Request):
    namespace: Namespace = "global"


class AuditRequest(Request):
    namespace: Namespace | None = None
    key: Key | None = None
    limit: int = Field(100, ge=1, le=10_000, description="the newest entries, oldest first")


class SetReply(BaseModel):
    namespace: str
    key: str
    version: int


class GetReply(BaseModel):
    namespace: str
    key: str
    found: bool
    value: Any
    version: int | None


class DeleteReply(BaseModel):
    deleted: bool


class ListReply(BaseModel):
    keys: list[str]
    count: int


class ClearReply(BaseModel):
    deleted: int


class StateSettings(BaseModel):
    """`plugins.state` (alias `plugins.state_service`) in the config file."""
    model_config = ConfigDict(extra="ignore")
    enabled: bool = True
    synchronous: Literal["FULL", "NORMAL", "full", "normal"] = "NORMAL"
    audit: bool = False
    purge_interval_s: float = Field(5.0, gt=0)
    db_path: str | None = None
    read_cache_entries: int = Field(10_000, ge=0, description="0 turns the read cache off")
