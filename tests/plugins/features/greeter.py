"""Exercises handler shapes: sync/async, (data)/(data, ctx), pydantic models and TypedDicts,
emit, push."""
import asyncio
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, with_config
from typing_extensions import NotRequired, TypedDict

from ksi_daemon.event_system import event_handler
from ksi_daemon.plugin_base import hookimpl
from ksi_daemon.protocol import KSIError

PLUGIN_METADATA = {"name": "greeter", "version": "2.0.0", "dependencies": ["counter"]}
STARTED = {}


class Greeting(BaseModel):
    name: str = Field(min_length=1)
    times: int = 1


@with_config(ConfigDict(extra="forbid"))
class Shout(TypedDict):
    name: Annotated[str, Field(min_length=1)]
    times: NotRequired[int]


@hookimpl
def ksi_startup(config, context):
    STARTED["data_dir"] = str(context.data_dir)
    STARTED["greeting"] = context.config.get("greeting", "hello")


@event_handler("greet:sync")
def greet_sync(data: Greeting):
    return {"text": " ".join([f"{STARTED['greeting']} {data.name}"] * data.times)}


@event_handler("greet:shout")
def greet_shout(data: Shout):
    return {"text": " ".join([data["name"].upper()] * data.get("times", 1)),
            "received": type(data).__name__}


@event_handler("greet:async")
async def greet_async(data: Greeting, ctx):
    await asyncio.sleep(0.01)
    count = await ctx.emit("counter:bump", {"by": data.times})
    ctx.push("greet:progress", {"name": data.name})
    return {"text": f"hi {data.name}", "count": count["value"], "data_dir": STARTED["data_dir"],
            "correlation_id": ctx.correlation_id}


@event_handler("greet:refuse")
def refuse(data):
    raise KSIError("conflict", "greeter refuses", {"why": "asked to"})


@event_handler("greet:slow")
async def slow(data):
    await asyncio.sleep(data.get("seconds", 5))
    return {"done": True}
