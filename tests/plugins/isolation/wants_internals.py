"""A plugin from a plugin dir declaring it needs the daemon's internals: only built-ins may."""
from ksi_daemon.event_system import event_handler
from ksi_daemon.plugin_types import PluginCapabilities

capabilities = PluginCapabilities(internals=True)


@event_handler("wants_internals:ping")
def ping(data):
    return {"pong": True}
