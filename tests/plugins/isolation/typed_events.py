"""Event schemas as the pure event-based design (seeds/002) writes them: `typing.TypedDict`.

pydantic refuses `typing.TypedDict` before Python 3.12; the daemon must accept these anyway.
"""
from typing import Any, Literal, TypedDict

from ksi_daemon.event_system import event_handler


class StateUpdate(TypedDict):
    namespace: str
    key: str
    value: Any
    operation: Literal["set", "get", "delete"]


class Loudness(TypedDict, total=False):
    volume: int


class Shout(Loudness):
    text: str
    update: StateUpdate


@event_handler("typed:update")
async def update(data: StateUpdate):
    """Echoes the validated update."""
    return {"seen": data}


@event_handler("typed:shout")
def shout(data: Shout):
    """Shouts `text`, `volume` times (optional, inherited from a total=False TypedDict)."""
    return {"text": data["text"].upper() * data.get("volume", 1),
            "operation": data["update"]["operation"]}
