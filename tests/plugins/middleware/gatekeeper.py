from ksi_daemon.event_system import event_handler
from ksi_daemon.plugin_base import hookimpl
from ksi_daemon.protocol import KSIError


@hookimpl
def ksi_pre_event(event_name, data):
    if data.get("password") == "wrong":
        raise KSIError("forbidden", "wrong password")
    if "shout" in data:
        return {**data, "shout": data["shout"].upper()}


@hookimpl
async def ksi_post_event(event_name, result):
    if isinstance(result, dict) and event_name.startswith("echo:"):
        return {**result, "stamped": True}


@event_handler("echo:back")
def echo(data):
    return {"echo": data}
