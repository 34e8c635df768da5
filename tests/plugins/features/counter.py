from ksi_daemon.event_system import event_handler

PLUGIN_METADATA = {"name": "counter", "priority": 500}
TOTAL = {"value": 0}


@event_handler("counter:bump")
def bump(data, ctx):
    TOTAL["value"] += data.get("by", 1)
    return {"value": TOTAL["value"], "correlation_id": ctx.correlation_id}
