"""A plugin that gives models a tool and watches every tool call (docs/TOOLS.md)."""
from __future__ import annotations

from pydantic import BaseModel, Field

from ksi_daemon.plugin_base import hookimpl
from ksi_daemon.protocol import FORBIDDEN, KSIError


class Text(BaseModel):
    text: str = Field(description="the text to count the words of")


def count_words(data: Text) -> dict:
    """Count the words of a text."""
    return {"words": len(data.text.split())}


@hookimpl
def ksi_tools_register(registry):
    # KSI name "words:count"; the model sees "words_count"
    registry.add("words:count", count_words, input=Text, idempotent=True, timeout_s=5)


@hookimpl
def ksi_tool_pre_execute(context):
    if context.name == "words:count":
        context.arguments["text"] = context.arguments.get("text", "").strip()
    if context.name == "state:clear" and context.agent_id is not None:
        raise KSIError(FORBIDDEN, "agents may not clear state")


@hookimpl
def ksi_tool_post_execute(context):
    context.annotations["checked_by"] = "word_tools"
