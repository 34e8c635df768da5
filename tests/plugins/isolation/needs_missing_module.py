"""A plugin whose dependency is not installed: it fails at import, before declaring anything."""
import ksi_module_that_is_not_installed  # noqa: F401

from ksi_daemon.event_system import event_handler


@event_handler("needs_missing_module:ping")
def ping(data):
    return {"pong": True}
