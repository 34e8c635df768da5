import asyncio
from pathlib import Path

from ksi_daemon.plugin_base import hookimpl


@hookimpl
async def ksi_startup(context):
    # Says where it hangs, for a test to signal it there rather than after a guessed delay.
    (context.data_dir / "hanging").touch()
    await asyncio.sleep(3600)
