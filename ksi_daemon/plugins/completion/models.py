"""Schemas of the completion events, and the typed objects the completion hooks receive."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


DEFAULT_MAX_TOOL_STEPS = 8


class Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "user", "assistant", "tool"] = "user"
    # None: an assistant message that only calls tools (OpenAI's shape).
    content: str | None


class CompletionRequest(Request):
    prompt: str | None = Field(None, description="the user's message for this turn")
    messages: list[ChatMessage] | None = Field(
        None, description="messages for this turn (instead of prompt), oldest first")
    model: str | None = Field(None, description="a litellm model name or a configured alias")
    session_id: str | None = Field(None, max_length=128,
                                   description="the conversation; earlier turns are sent along")
    agent_id: str | None = Field(None, description="the agent asking, for logs and subscribers")
    request_id: str | None = Field(None, max_length=128, description="default: generated")
    stream: bool = Field(False, description="push completion:chunk deltas while generating")
    temperature: float | None = Field(None, ge=0, le=2)
    max_tokens: int | None = Field(None, ge=1)
    timeout_s: float | None = Field(None, gt=0, le=3600,
                                    description="deadline of the call, retries included")
    priority: int = Field(0, description="higher runs first among queued requests")
    tools: list[str] | None = Field(
        None, max_length=256, description="event or tool names the model may call "
        "(KSI names like state:get or model names like state_get; docs/TOOLS.md)")
    max_tool_steps: int = Field(DEFAULT_MAX_TOOL_STEPS, ge=1, le=64,
                                description="rounds of tool calls before the request fails "
                                            "with `timeout` and its partial transcript")

    @model_validator(mode="after")
    def needs_something_to_say(self):
        if self.prompt is None and not self.messages:
            raise ValueError("give either prompt or messages")
        return self


class CancelRequest(Request):
    request_id: str = Field(description="the request to cancel")


class StatusRequest(Request):
    request_id: str | None = Field(None, description="one request's state; none: queue figures")


class ModelsRequest(Request):
    check: str | None = Field(None, description="a model name or alias: say whether a request "
                              "naming it would be accepted (nothing is called, no network)")


class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class ToolCallRecord(BaseModel):
    """One tool call of a completion and how it ended (a failure is a result the model read)."""
    call_id: str
    name: str = Field(description="the tool's KSI name")
    arguments: Any = Field(description="as the model gave them (a string if not JSON)")
    ok: bool
    result: Any = None
    error: dict[str, Any] | None = None
    duration_ms: float = 0.0
    step: int = Field(description="the model step (from 1) that asked for it")


class CompletionResult(BaseModel):
    """What completion:request answers and completion:result pushes."""
    request_id: str
    session_id: str
    model: str
    text: str
    usage: Usage
    cost_usd: float | None = None
    duration_ms: float
    attempts: int
    status: str = "completed"
    annotations: dict[str, Any] = Field(default_factory=dict)
    tool_calls: list[ToolCallRecord] = Field(
        default_factory=list, description="the tools the model called, in the order asked")
    resumed: bool = Field(False, description="run again after a daemon restart")
    deduplicated: bool = Field(False, description="a repeated request_id: this job's outcome, "
                                                   "not a new run")


class AsyncReply(BaseModel):
    request_id: str
    status: str
    session_id: str
    deduplicated: bool = Field(False, description="the request_id was known: its job's status")
    resumed: bool = Field(False, description="the job runs again after a daemon restart")


@dataclass
class PreCallContext:
    """Given to `ksi_completion_pre_call`: change `messages`, `model` or `params` in place."""
    request_id: str
    session_id: str
    model: str
    messages: list[dict]
    params: dict[str, Any]
    agent_id: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class PostResponseContext:
    """Given to `ksi_completion_post_response`: read the answer, add to `annotations`."""
    request_id: str
    session_id: str
    model: str
    messages: list[dict]
    text: str
    usage: dict[str, int]
    cost_usd: float | None
    attempts: int
    agent_id: str | None = None
    annotations: dict[str, Any] = field(default_factory=dict)
