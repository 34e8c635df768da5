"""`count:hit`, offered to models as a tool: appends a line to `file` each time it runs, then,
with `block`, waits a minute (long enough to kill the daemon between the call and its result)."""
import asyncio
from pathlib import Path

from pydantic import BaseModel

from ksi_daemon.event_system import event_handler


class Hit(BaseModel):
    file: str
    block: bool = False


@event_handler("count:hit")
async def hit(data: Hit):
    """Count one run in `file`."""
    path = Path(data.file)
    with path.open("a") as out:
        out.write("hit\n")
    if data.block:
        await asyncio.sleep(60)
    return {"hits": len(path.read_text().splitlines())}
