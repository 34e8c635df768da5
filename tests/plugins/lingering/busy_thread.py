"""A plugin whose thread is still at work when the daemon exits (like the completion plugin's
litellm import when SIGTERM comes right after start). It is not a daemon thread, so an
interpreter's normal exit would wait for it forever."""
import sys
import threading
import time

from ksi_daemon.plugin_base import hookimpl


def keep_busy():
    while True:
        sys.stderr.write("busy_thread: still working\n")
        time.sleep(0.01)


@hookimpl
def ksi_startup():
    threading.Thread(target=keep_busy, name="busy-plugin-thread").start()
