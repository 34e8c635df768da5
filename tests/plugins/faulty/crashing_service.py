import asyncio

from ksi_daemon.plugin_base import hookimpl


async def poll_forever():
    await asyncio.sleep(0.2)
    raise ConnectionError("upstream went away")


@hookimpl
def ksi_ready(context):
    return poll_forever()
