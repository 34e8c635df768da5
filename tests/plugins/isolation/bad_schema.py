"""A handler whose schema pydantic cannot build (a field of a plain class): this plugin fails
alone when its handlers are indexed, the daemon starts."""
from typing_extensions import TypedDict

from ksi_daemon.event_system import event_handler


class Thing:
    pass


class Request(TypedDict):
    thing: Thing


@event_handler("bad_schema:go")
def go(data: Request):
    return {}
