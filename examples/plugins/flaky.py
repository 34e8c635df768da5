"""A plugin that fails at start when its config says so, to show failure isolation.

With {"plugins": {"flaky": {"fail_at_startup": true}}}, system:plugins lists it as `failed` with
the reason, `flaky:ping` answers `unavailable`, and every other plugin keeps working.
"""
from ksi_daemon.event_system import event_handler
from ksi_daemon.plugin_base import hookimpl


@hookimpl
def ksi_startup(context):
    if context.config.get("fail_at_startup"):
        raise RuntimeError("fail_at_startup is set in plugins.flaky")


@event_handler("flaky:ping")
def ping(data):
    """Answers while the plugin is healthy."""
    return {"pong": True}
