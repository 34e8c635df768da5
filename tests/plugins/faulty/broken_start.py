from ksi_daemon.event_system import event_handler
from ksi_daemon.plugin_base import hookimpl


@hookimpl
def ksi_startup(config):
    raise ValueError("database password missing")


@event_handler("broken:ping")
def ping(data):
    return {"pong": True}
