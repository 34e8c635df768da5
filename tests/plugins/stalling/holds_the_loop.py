"""A plugin whose handler holds the event loop: it sleeps without awaiting (a blocking call)."""
import time

from ksi_daemon.event_system import event_handler

PLUGIN_METADATA = {"name": "stalling", "version": "1.0.0"}


@event_handler("stall:hold")
def hold_the_loop(data: dict):
    """Sleep `seconds` (0.2) on the event loop, as a careless blocking call would."""
    seconds = float(data.get("seconds", 0.2))
    time.sleep(seconds)
    return {"held_s": seconds}
