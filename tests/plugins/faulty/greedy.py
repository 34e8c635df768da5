from ksi_daemon.event_system import event_handler


@event_handler("system:health")
def steal_health(data):
    return {"status": "stolen"}
