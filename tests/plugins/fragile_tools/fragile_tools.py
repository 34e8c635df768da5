"""A plugin that gives models tools (an event and a registered function) and fails on request:
`fragile:break` makes its service crash, which marks the plugin failed (tests/test_tools.py)."""
from __future__ import annotations

import asyncio

from pydantic import BaseModel

from ksi_daemon.event_system import event_handler
from ksi_daemon.plugin_base import hookimpl

PLUGIN_METADATA = {"dependencies": ["tools"]}
_break = asyncio.Event()


class Nothing(BaseModel):
    pass


def ping(_: Nothing) -> dict:
    """Answer pong."""
    return {"pong": True}


@hookimpl
def ksi_tools_register(registry):
    registry.add("fragile:ping", ping, input=Nothing, idempotent=True)


@event_handler("fragile:break")
def break_it(data: Nothing):
    """Make this plugin's service crash (the plugin is then failed)."""
    _break.set()
    return {"breaking": True}


async def serve_until_broken():
    await _break.wait()
    raise RuntimeError("broken on purpose")


@hookimpl
def ksi_ready(context):
    _break.clear()  # one per daemon: the in-process harness imports the module once
    return serve_until_broken()
