"""Tools for tests/test_tools.py: plugin tools through ksi_tools_register, the execute hooks,
and `tool_kit:call` / `tool_kit:resolve`, which send the internal tools events as a plugin would
(the completion loop does the same)."""
from __future__ import annotations

import asyncio
import time

from pydantic import BaseModel

from ksi_daemon.event_system import event_handler
from ksi_daemon.plugin_base import hookimpl
from ksi_daemon.protocol import FORBIDDEN, KSIError

PLUGIN_METADATA = {"dependencies": ["tools"]}
_context = None


class Words(BaseModel):
    words: list[str]


def shout(words: Words) -> dict:
    """Upper-case some words (sync: runs in a thread)."""
    return {"shouted": [w.upper() for w in words.words]}


async def explode(_) -> None:
    raise RuntimeError("the tool blew up")


def sleep_long(_) -> None:
    time.sleep(2)  # longer than its timeout_s: the call must come back as timeout first


async def unencodable(_) -> object:
    return {"set": object()}


@hookimpl
def ksi_startup(context):
    global _context
    _context = context


@hookimpl
def ksi_tools_register(registry):
    registry.add("kit:shout", shout, input=Words, idempotent=True)
    registry.add("kit:explode", explode, description="Always raises")
    registry.add("kit:sleep", sleep_long, description="Sleeps past its timeout", timeout_s=0.2)
    registry.add("kit:unencodable", unencodable, description="Returns what is not JSON")
    registry.add("kit_shout", shout, input=Words)  # its model name is taken: refused


@hookimpl
def ksi_tool_pre_execute(context):
    if context.name == "kit:shout" and context.arguments.get("words") == ["secret"]:
        raise KSIError(FORBIDDEN, "no shouting secrets")
    if context.name == "kit:shout":
        context.arguments["words"] = context.arguments.get("words", []) + ["amen"]


@hookimpl
def ksi_tool_post_execute(context):
    context.annotations["seen_by"] = "tool_kit"
    context.annotations["ok"] = context.ok


@event_handler("tool_kit:call")
async def call(data):
    return await _context.emit("tools:execute", data)


@event_handler("tool_kit:resolve")
async def resolve(data):
    return await _context.emit("tools:resolve", data)
