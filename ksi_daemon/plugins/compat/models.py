"""Schemas of the events upstream KSI's clients send that today's daemon has no name for.

They are permissive (`extra="allow"`): upstream clients send fields of their own (client ids,
capabilities, profiles) that this daemon only acknowledges.
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class Announcement(BaseModel):
    model_config = ConfigDict(extra="allow")
    client_id: str | None = Field(None, max_length=256, description="the client's own name")


class ConnectionAnnouncement(Announcement):
    action: Literal["connect", "disconnect"] = "connect"


class AdminIdentity(Announcement):
    role: str | None = Field(None, max_length=256)


class AgentPresence(BaseModel):
    model_config = ConfigDict(extra="allow")
    agent_id: str | None = Field(None, max_length=256, description="default: the client_id")


class EventsQuery(BaseModel):
    model_config = ConfigDict(extra="allow")  # (client_id: not recorded here, ignored)
    event_patterns: list[str] | None = Field(None, max_length=256,
                                             description="only events matching one of these")
    since: float | str | None = Field(None, description="a Unix time or an ISO 8601 time")
    until: float | str | None = None
    limit: int = Field(100, ge=0, le=100_000)
    reverse: bool = Field(True, description="newest first (upstream's default)")
