"""Schemas of the orchestration events and of the `plugins.orchestration` config section."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .modes import MODES

MAX_ROUNDS = 50


class Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StartRequest(Request):
    mode: str = Field(description="debate, collaboration, teaching, brainstorm or analysis")
    topic: str = Field(min_length=1, max_length=4000, description="what the agents talk about")
    agents: int | None = Field(None, description="how many agents take part (default: the "
                                                 "mode's; bounds: orchestration:modes)")
    rounds: int | None = Field(None, ge=1, le=MAX_ROUNDS,
                               description="rounds; in each, every agent speaks once")
    model: str | None = Field(None, min_length=1, max_length=200,
                              description="model for every agent (default: each profile's)")
    tools: list[str] | None = Field(None, max_length=256,
                                    description="tools every agent's model may call (event or "
                                                "tool names, docs/TOOLS.md; default: each "
                                                "profile's)")
    nodes: list[str] | None = Field(None, min_length=1, max_length=64,
                                    description="cluster mode: the nodes the agents run on, "
                                                "taken in turn (default: the node asked)")

    @field_validator("mode")
    @classmethod
    def mode_is_known(cls, mode: str) -> str:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; modes: {', '.join(MODES)}")
        return mode

    @field_validator("topic")
    @classmethod
    def topic_says_something(cls, topic: str) -> str:
        if not topic.strip():
            raise ValueError("topic is blank")
        return topic.strip()

    @model_validator(mode="after")
    def agents_fit_the_mode(self):
        mode = MODES[self.mode]
        if self.agents is not None and not mode.min_agents <= self.agents <= mode.max_agents:
            raise ValueError(f"{self.mode} takes {mode.min_agents} to {mode.max_agents} agents, "
                             f"not {self.agents}")
        return self


class OrchestrationRequest(Request):
    orchestration_id: str = Field(min_length=1, max_length=128)


class StatusRequest(Request):
    orchestration_id: str | None = Field(None, min_length=1, max_length=128,
                                         description="one orchestration; none: all of them")


class ModesRequest(Request):
    pass


class Participant(BaseModel):
    agent_id: str
    role: str
    profile: str
    session_id: str | None = None
    node: str | None = Field(None, description="cluster mode: the node it was spawned on")

    def shown(self) -> dict:
        """As replies show it: `node` only when the start named nodes (cluster mode)."""
        return self.model_dump(exclude={"node"} if self.node is None else None)


class StartReply(BaseModel):
    orchestration_id: str
    status: str
    mode: str
    topic: str
    rounds: int
    agents: list[Participant]
    tools: list[str] = Field(default_factory=list, description="as given to the start")


class TerminateReply(BaseModel):
    orchestration_id: str
    status: str


class Turn(BaseModel):
    orchestration_id: str
    round: int
    turn: int
    speaker: str
    role: str
    text: str
    session_id: str | None = None


class Summary(BaseModel):
    orchestration_id: str
    mode: str
    topic: str
    status: str = Field(description="running, finished, terminated or failed")
    reason: str | None = None
    rounds: int
    round: int = Field(description="the round being played (or the last one played)")
    turns: int = Field(description="turns taken so far")
    agents: list[Participant]
    session_ids: list[str]
    model: str | None
    started_at: float
    finished_at: float | None
    duration_s: float


class Detail(Summary):
    transcript: list[Turn] = Field(description="every turn so far, in order")


class StatusReply(BaseModel):
    """With an orchestration_id: that orchestration (a Detail). Without: all of them."""
    orchestrations: list[Summary]
    count: int


class RoleInfo(BaseModel):
    role: str
    profile: str = Field(description="the built-in agent profile that plays it")
    instruction: str = Field(description="what it is told to do; {topic} is filled in")


class ModeInfo(BaseModel):
    mode: str
    description: str
    roles: list[RoleInfo] = Field(description="in speaking order")
    default_agents: int
    default_rounds: int
    min_agents: int
    max_agents: int


class ModesReply(BaseModel):
    modes: list[ModeInfo]
    count: int


class Settings(BaseModel):
    """`plugins.orchestration` in the config file."""
    model_config = ConfigDict(extra="forbid")
    enabled: bool = True
    max_running: int = Field(32, ge=1, description="orchestrations running at once")
    finished_kept: int = Field(100, ge=0, description="finished ones orchestration:status "
                                                      "still shows")
    finished_kept_s: float = Field(3600.0, ge=0, description="... and for how long")
    turn_timeout_s: float = Field(600.0, gt=0, le=3600,  # agent:send's own bound
                                  description="one agent's answer, at most")
