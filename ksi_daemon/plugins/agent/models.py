"""Schemas of the agent events and of `plugins.agent`; system:discover shows them."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, model_validator

from ...storage.limits import SQLITE_INT_MAX
from .profiles import BusyPolicy, Profile
from .schedules import EVERY_S_MAX, EVERY_S_MIN, cron_problem

Status = Literal["running", "restarting", "failed", "terminated"]
# Lookups accept any id (an id that was never valid is simply not found).
AgentRef = Field(min_length=1, max_length=256, description="the agent")
AGENT_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,255}$"


class Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SpawnRequest(Request):
    # `profile_name`: the name seeds/001 (the deployment guide) spawns with
    profile: str | None = Field(None, max_length=64,
                                validation_alias=AliasChoices("profile", "profile_name"),
                                description="a profile name (agent:profiles); default "
                                            "assistant; also accepted as profile_name")
    config: Profile | None = Field(None, description="an inline profile instead of `profile`")
    agent_id: str | None = Field(None, pattern=AGENT_ID_PATTERN,
                                 description="default: <profile>-<random>; letters, digits, "
                                             "_ . - (at most 256)")
    task: str | None = Field(None, min_length=1, max_length=200_000,
                             description="the agent's first message; it answers it")
    session_id: str | None = Field(None, min_length=1, max_length=128,
                                   description="the conversation to continue; default: a new one")
    model: str | None = Field(None, max_length=256, description="overrides the profile's model")
    max_turns: int | None = Field(None, ge=1, le=100_000,
                                  description="overrides the profile's max_turns")
    topics: list[str] = Field(default_factory=list, max_length=64,
                              description="message topics the agent listens to and answers on")
    on_busy: BusyPolicy | None = Field(None, description="overrides the profile's on_busy")
    node: str | None = Field(None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$",
                             description="cluster mode: the node to run it on (default: the "
                                         "node asked)")

    @model_validator(mode="after")
    def one_source_of_profile(self):
        if self.profile is not None and self.config is not None:
            raise ValueError("give either profile or config, not both")
        return self


class SpawnReply(BaseModel):
    agent_id: str
    status: str
    profile: str
    session_id: str


class AgentIdRequest(Request):
    agent_id: str = AgentRef


class TerminateReply(BaseModel):
    agent_id: str
    status: str


class ListRequest(Request):
    status: Status | None = Field(None, description="only agents in this state; terminated "
                                                    "agents are listed only when asked for")


class AgentRecord(BaseModel):
    agent_id: str
    profile: str
    status: str
    created_at: float
    session_id: str
    messages_handled: int
    node: str | None = Field(None, description="cluster mode only: the node it runs on")


class ListReply(BaseModel):
    agents: list[AgentRecord]
    count: int
    tasks_alive: int = Field(description="agent tasks of this plugin not finished yet")
    daemon_tasks: int = Field(description="every asyncio task alive in the daemon")


class TurnRecord(BaseModel):
    message_id: str
    sender: str | None
    topic: str | None
    content: str
    reply: str | None
    turn: int | None
    request_id: str | None
    state: str


class InfoReply(AgentRecord):
    model: str | None
    max_turns: int
    turns: int
    restarts: int
    error: str | None
    pending: int
    answering: str | None = Field(None, description="the message whose turn is running now")
    system_prompt: str
    recent: list[TurnRecord]
    identity: dict[str, Any] | None = Field(None, description="the agent's record in the "
                                                              "identities file, if any")


class SendRequest(Request):
    agent_id: str = AgentRef
    content: str = Field(min_length=1, max_length=200_000)
    sender: str | None = Field(None, min_length=1, max_length=256,
                               description="who speaks; an agent id makes the reply go to that "
                                           "agent's inbox")
    wait: bool = Field(False, description="answer with the agent's reply, which then goes only "
                                          "to this caller")
    timeout_s: float | None = Field(None, gt=0, le=3600,
                                    description="with wait: how long to wait for the reply")


class ReplyInfo(BaseModel):
    text: str
    request_id: str
    session_id: str
    turn: int


class SendReply(BaseModel):
    message_id: str
    delivered: bool = Field(description="the message is stored in the agent's inbox and a "
                                        "running agent will answer it")
    reply: ReplyInfo | None = None


class InterruptReply(BaseModel):
    agent_id: str
    interrupted: bool = Field(description="a running turn was stopped")
    reason: str | None = Field(None, description="when not: idle (no turn running), finished "
                                                 "(it ended first), or the agent's status")
    message_id: str | None = Field(None, description="the message whose turn was stopped")
    request_id: str | None = Field(None, description="its cancelled completion")


class ScheduleRequest(Request):
    agent_id: str = AgentRef
    every_s: float | None = Field(None, ge=EVERY_S_MIN, le=EVERY_S_MAX,
                                  description="fire every this many seconds")
    cron: str | None = Field(None, min_length=9, max_length=256,
                             description="or a 5-field cron expression, in UTC")
    prompt: str = Field(min_length=1, max_length=200_000,
                        description="the message each firing puts in the agent's inbox")

    @model_validator(mode="after")
    def one_way_of_firing(self):
        if (self.every_s is None) == (self.cron is None):
            raise ValueError("give either every_s or cron")
        if self.cron is not None and (problem := cron_problem(self.cron)) is not None:
            raise ValueError(f"cron {self.cron!r}: {problem}")
        return self


class ScheduleRecord(BaseModel):
    schedule_id: str
    agent_id: str
    every_s: float | None
    cron: str | None
    prompt: str
    created_at: float
    next_at: float = Field(description="the next firing (Unix time)")
    fired: int = Field(description="firings delivered to the inbox")
    coalesced: int = Field(description="firings dropped because the previous one still waited "
                                       "(or missed while the daemon was down)")


class SchedulesRequest(Request):
    agent_id: str | None = Field(None, min_length=1, max_length=256,
                                 description="only this agent's schedules")


class SchedulesReply(BaseModel):
    schedules: list[ScheduleRecord]
    count: int


class UnscheduleRequest(Request):
    schedule_id: str = Field(min_length=1, max_length=64)


class UnscheduleReply(BaseModel):
    schedule_id: str
    agent_id: str
    status: Literal["unscheduled"]


class ProfilesRequest(Request):
    pass


class ProfileEntry(Profile):
    source: str


class ProfilesReply(BaseModel):
    profiles: list[ProfileEntry]
    count: int
    errors: list[dict[str, Any]]


class InboxDelivery(BaseModel):
    """`agent:inbox`, emitted by the message plugin for each topic message an agent receives."""
    model_config = ConfigDict(extra="ignore")
    agent_id: str
    message_id: str = Field(max_length=64)
    topic: str
    sender: str | None = None
    content: Any = None
    timestamp: float | None = None


class AgentSettings(BaseModel):
    model_config = ConfigDict(extra="allow")  # `enabled` belongs to the plugin manager

    max_restarts: int = Field(3, ge=0, description="crashes in a row before an agent is failed")
    restart_base_delay_s: float = Field(1.0, gt=0, description="first back-off; doubles per crash")
    restart_max_delay_s: float = Field(30.0, gt=0)
    completion_timeout_s: float | None = Field(None, gt=0, le=3600,
                                               description="deadline of one turn's completion; "
                                                           "none: completion's default")
    send_timeout_s: float = Field(300.0, gt=0, description="default wait of agent:send wait")
    recent_kept: int = Field(20, ge=1, le=1000, description="answered messages kept per agent")
    keep_terminated: int = Field(1000, ge=0, le=SQLITE_INT_MAX,  # a LIMIT in agents.db
                                 description="terminated agents still listed")
    max_schedules: int = Field(100, ge=1, le=100_000, description="schedules per agent")
    profiles_dir: str | None = Field(None, description="default: <var>/agent_profiles")
    identities_file: str | None = Field(None, description="agents' identities (JSON), shown "
                                                          "by agent:info")
    db_path: str | None = None
    synchronous: Literal["NORMAL", "FULL", "normal", "full"] = "NORMAL"
