"""A plugin that holds what it allocates and reports a queue: memory and queue depth by plugin
have something of its own to show."""
from ksi_daemon.event_system import event_handler
from ksi_daemon.plugin_base import hookimpl

kept: list[bytes] = []


@event_handler("hoard:keep")
def keep(data):
    kept.append(bytes(data.get("size", 100_000)))  # allocated here: this plugin's memory
    return {"kept": len(kept)}


@event_handler("hoard:fail")
def fail(data):
    raise RuntimeError("hoard:fail always fails")


@hookimpl
def ksi_queue_depths():
    return {"kept": len(kept), "not_a_number": "x"}
