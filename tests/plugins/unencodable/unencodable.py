"""Handlers whose replies orjson cannot encode, each answering a different way: the daemon
must still send exactly one coded reply for each (PROTOCOL.md §1)."""
import asyncio

from ksi_daemon.event_system import event_handler
from ksi_daemon.protocol import KSIError

PLUGIN_METADATA = {"name": "unencodable", "version": "1.0.0"}
TOO_DEEP = 300  # orjson encodes at most 254 nested arrays


def nested(levels: int):
    value = 1
    for _ in range(levels):
        value = [value]
    return value


@event_handler("unencodable:big_int")
def big_int(data):
    return {"n": 2 ** 70}  # past 64 bits


@event_handler("unencodable:deep")
def deep(data):
    return {"deep": nested(TOO_DEEP)}


@event_handler("unencodable:deep_details")
def deep_details(data):
    raise KSIError("conflict", "refused with details", {"deep": nested(TOO_DEEP)})


@event_handler("unencodable:deep_async")
async def deep_async(data):
    await asyncio.sleep(0)
    return {"deep": nested(TOO_DEEP)}


@event_handler("unencodable:deep_future")
def deep_future(data):
    future = asyncio.get_running_loop().create_future()
    future.set_result({"deep": nested(TOO_DEEP)})
    return future


@event_handler("unencodable:deep_later")
def deep_later(data, ctx):
    reply = ctx.reply_later()
    asyncio.get_running_loop().call_soon(reply.set_result, {"deep": nested(TOO_DEEP)})
    return reply
