"""A plugin for tests/test_plugin_reload.py, which copies it and edits VERSION and the events.

Each instance writes `startup VERSION` / `shutdown VERSION` marks to its data dir, so a test
sees which instance's hooks ran, in which order.
"""
import asyncio

from ksi_daemon.event_system import event_handler
from ksi_daemon.plugin_base import hookimpl

VERSION = "1.0.0"
PLUGIN_METADATA = {"name": "reloadable", "version": VERSION}
_context = {}


def _mark(what: str) -> None:
    with open(_context["dir"] / "marks", "a") as marks:
        marks.write(f"{what} {VERSION}\n")


@hookimpl
def ksi_startup(context):
    _context["dir"] = context.data_dir
    _mark("startup")


@hookimpl
def ksi_shutdown(context):
    _mark("shutdown")


@event_handler("reloadable:version")
def version(data):
    return {"version": VERSION}


@event_handler("reloadable:slow")
async def slow(data):
    """Answers after `s` seconds, with the version that started answering."""
    await asyncio.sleep(data.get("s", 0.2))
    return {"version": VERSION, "n": data.get("n")}


@event_handler("reloadable:old_only")
def old_only(data):
    return {"version": VERSION}
