from ksi_daemon.event_system import event_handler


@event_handler("flaky:divide")
def divide(data):
    return {"result": data["a"] / data["b"]}
