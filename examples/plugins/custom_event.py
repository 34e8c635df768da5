from ksi_daemon.event_system import event_handler

@event_handler("my:custom:event")
async def handle_custom_event(data):
    # Your logic here
    return {"status": "processed"}

# Plugin is auto-registered on import
