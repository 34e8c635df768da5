"""Schemas of the state events; system:discover shows them to clients as JSON Schema."""
from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, with_config
from typing_extensions import NotRequired, TypedDict

from ...storage.limits import SQLITE_INT_MAX

MAX_KEY_CHARS = 1024
MAX_NAMESPACE_CHARS = 256
MAX_TTL_S = 10 * 365 * 24 * 3600.0
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


# Keys and namespaces are checked on every state request: by a pattern, which pydantic-core runs
# itself, not by a Python validator, a call per field (bench/RESULTS.md, "State").
PRINTABLE = r"^[^\x00-\x1f\x7f-\x9f]*$"
Key = Annotated[str, Field(min_length=1, max_length=MAX_KEY_CHARS, pattern=PRINTABLE,
                           description="the key (no control characters)")]
Namespace = Annotated[str, Field(min_length=1, max_length=MAX_NAMESPACE_CHARS, pattern=PRINTABLE,
                                 description="keys are unique per namespace (no control "
                                 "characters)")]
Prefix = Annotated[str, Field(max_length=MAX_KEY_CHARS, pattern=PRINTABLE,
                              description="only keys starting so")]


class Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


# The requests of the hot events (state:set, state:get; state:delete shares KeyRequest) are
# TypedDicts, validated into plain dicts: building a model instance cost about a microsecond more
# per request (bench/validation_micro.py). Absent optional fields are absent from the dict: read
# them with .get(name, default).
GLOBAL = "global"
OptionalNamespace = NotRequired[Annotated[Namespace, Field(json_schema_extra={"default": GLOBAL})]]


@with_config(ConfigDict(extra="forbid"))
class SetRequest(TypedDict):
    key: Key
    value: Annotated[Any, Field(description="any JSON value; it comes back with its type "
                                "unchanged")]
    namespace: OptionalNamespace
    ttl_s: NotRequired[Annotated[float | None, Field(gt=0, le=MAX_TTL_S, description="seconds "
                                                     "until the key expires")]]
    if_version: NotRequired[Annotated[int | None, Field(
        ge=0, le=SQLITE_INT_MAX, description="write only if the key is at this version (0: only "
        "if absent); else `conflict`")]]


@with_config(ConfigDict(extra="forbid"))
class KeyRequest(TypedDict):
    key: Key
    namespace: OptionalNamespace


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
    """`plugins.state` (or the guide's `plugins.state_service`) in the config file."""
    model_config = ConfigDict(extra="ignore")
    enabled: bool = True
    synchronous: Literal["FULL", "NORMAL", "full", "normal"] = "NORMAL"
    audit: bool = True
    audit_keep_s: float = Field(30 * 86400.0, gt=0, description="audit rows kept this long")
    audit_keep_rows: int = Field(1_000_000, ge=1, le=SQLITE_INT_MAX,
                                 description="and at most this many (the newest)")
    purge_interval_s: float = Field(5.0, gt=0)
    db_path: str | None = None
    read_cache_entries: int = Field(10_000, ge=0, description="0 turns the read cache off")
    # For tests only: the database may grow to this many pages (PRAGMA max_page_count), past
    # which every write fails as on a full disk ("database or disk is full").
    max_page_count: int | None = Field(None, ge=1, le=SQLITE_INT_MAX)
