import asyncio
from ksi_daemon.plugin_base import hookimpl

@hookimpl
async def ksi_startup():
    await asyncio.sleep(3600)
