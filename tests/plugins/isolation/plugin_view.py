"""What a plugin sees of the daemon through its context; `plugin_view:report` tells."""
from ksi_daemon.event_system import event_handler
from ksi_daemon.plugin_base import hookimpl

seen = {}


@hookimpl
async def ksi_startup(context):
    seen["attributes"] = sorted(a for a in dir(context) if not a.startswith("_"))
    try:
        context.internals
    except PermissionError as exc:
        seen["internals"] = str(exc)
    seen["deadline_before_shutdown"] = context.shutdown_deadline
    seen["data_dir"] = str(context.data_dir)
    # an event emitted through the facade is recorded under this plugin's name
    await context.emit("plugin_view:started", {"by": context.name})
    context.announce("plugin_view:announced", {"by": context.name})


@event_handler("plugin_view:report")
def report(data):
    return seen
