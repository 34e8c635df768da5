"""A function-style plugin with schemas: validation, ctx.emit, ctx.push, coded errors, config.

Its config section is `plugins.greeter` in the daemon's config file, for example
{"plugins": {"greeter": {"blocked": ["mallory"]}}}.
"""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from ksi_daemon.event_system import event_handler
from ksi_daemon.protocol import FORBIDDEN, KSIError

# A module plugin describes itself with a dict; a BasePlugin subclass passes PluginMetadata.
PLUGIN_METADATA = {"version": "1.0.0", "description": "Greets people and counts greetings",
                   "priority": 200}

# Lives as long as the daemon process; a plugin that must remember across restarts would keep
# it in its data dir or emit state:set.
_times_greeted: dict[str, int] = {}


class GreetRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt field is a validation_error
    name: str = Field(min_length=1, max_length=40, description="who to greet")
    shout: bool = Field(False, description="upper-case the greeting")


class GreetReply(BaseModel):
    greeting: str
    times: int = Field(description="greetings for this name since the daemon started")
    daemon_uptime_s: float


class CountRequest(BaseModel):
    name: str = Field(description="the name to look up")


@event_handler("greeter:greet", returns=GreetReply)
async def greet(data: GreetRequest, ctx) -> GreetReply:
    """Greet someone by name; names in the config's `blocked` list are refused."""
    if data.name in ctx.config.get("blocked", []):
        raise KSIError(FORBIDDEN, f"{data.name} may not be greeted", {"name": data.name})
    # Another plugin's event, asked through the router: plugins never import each other.
    health = await ctx.emit("system:health")
    times = _times_greeted[data.name] = _times_greeted.get(data.name, 0) + 1
    # Goes to the requesting connection once, and to every connection subscribed to greeter:*.
    ctx.push("greeter:greeted", {"name": data.name, "times": times})
    text = f"Hello, {data.name}!"
    return GreetReply(greeting=text.upper() if data.shout else text, times=times,
                      daemon_uptime_s=health["uptime_s"])


@event_handler("greeter:count")
def count(data: CountRequest) -> dict:
    """How often a name was greeted (a sync handler: answered inline, without a task)."""
    return {"name": data.name, "times": _times_greeted.get(data.name, 0)}
