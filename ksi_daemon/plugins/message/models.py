"""Schemas of the message events and of `plugins.message`; system:discover shows them."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .topics import check_concrete_topic, check_topic_text

AgentId = Field(None, min_length=1, max_length=256,
                description="subscribe an agent's inbox (delivered as agent:inbox events) "
                            "instead of this connection")


class Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SubscribeRequest(Request):
    topics: list[str] = Field(default_factory=list, max_length=256,
                              description="topics or patterns ('*', 'room:*', fnmatch)")
    agent_id: str | None = AgentId
    replay: bool = Field(False, description="with agent_id: deliver the retained messages on "
                                            "its topics it has not been handed yet")

    @field_validator("topics")
    @classmethod
    def topics_are_usable(cls, topics: list[str]) -> list[str]:
        return [check_topic_text(topic) for topic in topics]


class UnsubscribeRequest(Request):
    topics: list[str] | None = Field(None, max_length=256,
                                     description="patterns to leave; absent: all of them")
    agent_id: str | None = AgentId

    @field_validator("topics")
    @classmethod
    def topics_are_usable(cls, topics: list[str] | None) -> list[str] | None:
        return None if topics is None else [check_topic_text(topic) for topic in topics]


class TopicsReply(BaseModel):
    topics: list[str]
    agent_id: str | None = None
    replayed: int | None = None


class PublishRequest(Request):
    topic: str = Field(description="a concrete topic (no wildcards)")
    content: Any = Field(description="any JSON value")
    sender: str | None = Field(None, max_length=256,
                               description="who speaks; default: this connection's id")

    @field_validator("topic")
    @classmethod
    def topic_is_concrete(cls, topic: str) -> str:
        return check_concrete_topic(topic)


class PublishReply(BaseModel):
    message_id: str
    delivered: int = Field(description="connections and agents the message was handed to "
                                       "(in cluster mode: this node's connections; the other "
                                       "nodes' and the agents' get it from the stream)")


class HistoryRequest(Request):
    topic: str = Field(description="a concrete topic")
    limit: int = Field(50, ge=1, le=100_000, description="the newest messages, oldest first")

    @field_validator("topic")
    @classmethod
    def topic_is_concrete(cls, topic: str) -> str:
        return check_concrete_topic(topic)


class ReceivedMessage(BaseModel):
    message_id: str
    topic: str
    sender: str | None
    content: Any
    timestamp: float


class HistoryReply(BaseModel):
    topic: str
    messages: list[ReceivedMessage]
    count: int


class MessageSettings(BaseModel):
    model_config = ConfigDict(extra="allow")  # `enabled` belongs to the plugin manager

    retention_per_topic: int = Field(100, ge=0, le=1_000_000)
    retention_max_age_s: float | None = Field(None, gt=0)
    max_topics: int = Field(10_000, ge=1, description="retained topics; the least recently "
                                                       "published is forgotten past it")
    agent_queue_size: int = Field(1000, ge=1, description="undelivered messages per agent inbox")
    max_patterns_per_subscriber: int = Field(256, ge=1)
    db_path: str | None = None
    synchronous: Literal["NORMAL", "FULL", "normal", "full"] = "NORMAL"
