"""An event the tool-loop tests offer as a tool: it returns only once `parties` calls with the
same `name` are waiting, so two calls of one model step finish only if they run concurrently."""
import asyncio

from pydantic import BaseModel, Field

from ksi_daemon.event_system import event_handler

_arrived: dict[str, int] = {}
_everyone_here: dict[str, asyncio.Event] = {}


class BarrierWait(BaseModel):
    name: str
    parties: int = Field(ge=1, le=16)


@event_handler("barrier:wait")
async def wait_for_the_others(data: BarrierWait):
    """Wait (at most 5 s) until `parties` callers wait on `name`."""
    _arrived[data.name] = _arrived.get(data.name, 0) + 1
    here = _everyone_here.setdefault(data.name, asyncio.Event())
    if _arrived[data.name] >= data.parties:
        here.set()
    await asyncio.wait_for(here.wait(), 5)
    return {"name": data.name, "arrived": _arrived[data.name]}
