"""Schemas of the conversation events; system:discover shows them to clients as JSON Schema."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ...storage.limits import SQLITE_INT_MAX

SessionId = Field(min_length=1, max_length=256, description="the conversation's id")


class Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Message(Request):
    """One message of a conversation, as `conversation:append` and `append_turn` take it."""
    role: str = Field(min_length=1, max_length=64, description="user, assistant, system, ...")
    content: str | None = Field(description="the turn's text; null: an assistant message "
                                            "that only calls tools")
    tool_calls: list[dict[str, Any]] | None = Field(
        None, max_length=128, description="an assistant's tool calls, in OpenAI's shape "
        "({id, type: function, function: {name, arguments}})")
    tool_call_id: str | None = Field(None, max_length=256,
                                     description="a tool message: the call it answers")
    model: str | None = None
    usage: dict[str, Any] | None = Field(None, description="token counts, as the model gave")
    request_id: str | None = Field(None, max_length=256)
    metadata: dict[str, Any] | None = None


class AppendRequest(Message):
    session_id: str = SessionId


class AppendTurnRequest(Request):
    session_id: str = SessionId
    messages: list[Message] = Field(min_length=1, max_length=256,
                                    description="the turn's messages in order (the user's, "
                                                "any tool steps, the answer)")


class AppendReply(BaseModel):
    session_id: str
    message_id: int
    timestamp: float


class AppendTurnReply(BaseModel):
    session_id: str
    message_ids: list[int]
    timestamp: float


class HistoryRequest(Request):
    session_id: str = SessionId
    limit: int = Field(50, ge=1, le=10_000, description="the newest turns, oldest first")


class ListRequest(Request):
    limit: int = Field(50, ge=1, le=1000)
    offset: int = Field(0, ge=0, le=SQLITE_INT_MAX)
    sort: Literal["updated_desc", "updated_asc", "created_desc", "created_asc",
                  "messages_desc"] = "updated_desc"


class GetRequest(Request):
    session_id: str = SessionId
    limit: int = Field(100, ge=1, le=10_000)
    offset: int = Field(0, ge=0, le=SQLITE_INT_MAX,
                        description="skip this many of the oldest messages")


class SearchRequest(Request):
    query: str = Field(min_length=1, max_length=1000)
    session_id: str | None = Field(None, description="only this conversation")
    limit: int = Field(20, ge=1, le=1000)
    syntax: Literal["words", "fts5"] = Field(
        "words", description="words: every word must appear; fts5: SQLite FTS5 query syntax")


class ExportRequest(Request):
    session_id: str = SessionId
    format: Literal["markdown", "json"] = "markdown"


class ExportReply(BaseModel):
    session_id: str
    format: str
    path: str
    size: int
    message_count: int


class ConversationSettings(BaseModel):
    """`plugins.conversation` in the config file."""
    model_config = ConfigDict(extra="ignore")
    enabled: bool = True
    synchronous: Literal["FULL", "NORMAL", "full", "normal"] = "FULL"
    db_path: str | None = None
    exports_dir: str | None = None
