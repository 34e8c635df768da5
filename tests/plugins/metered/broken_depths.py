"""A plugin whose queue depths cannot be read: the other plugins' figures must not suffer."""
from ksi_daemon.plugin_base import hookimpl


@hookimpl
def ksi_queue_depths():
    raise RuntimeError("queue depths unreadable")
