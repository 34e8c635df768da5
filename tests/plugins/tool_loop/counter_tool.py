"""`count:hit`, a plugin tool (ksi_tools_register) that is not idempotent: it appends a line to
`file` each time it runs, then, with `block`, waits a minute (long enough to kill the daemon
between the call and its result). `count:again` is the same function declared idempotent; with
`block_first` it waits only in its first run (the file was empty), so a run again after a
restart finishes."""
import asyncio
from pathlib import Path

from pydantic import BaseModel

from ksi_daemon.plugin_base import hookimpl

PLUGIN_METADATA = {"dependencies": ["tools"]}


class Hit(BaseModel):
    file: str
    block: bool = False
    block_first: bool = False


async def hit(data: Hit) -> dict:
    """Count one run in `file`."""
    path = Path(data.file)
    first = not path.exists() or not path.read_text()
    with path.open("a") as out:
        out.write("hit\n")
    if data.block or (data.block_first and first):
        await asyncio.sleep(60)
    return {"hits": len(path.read_text().splitlines())}


@hookimpl
def ksi_tools_register(registry):
    registry.add("count:hit", hit, input=Hit, idempotent=False)
    registry.add("count:again", hit, input=Hit, idempotent=True)
