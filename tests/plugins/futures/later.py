"""Plain handlers that answer with an asyncio Future: the router replies once it resolves."""
import asyncio

from ksi_daemon.event_system import event_handler
from ksi_daemon.protocol import KSIError

PLUGIN_METADATA = {"name": "later", "version": "1.0.0"}


def resolved_after(seconds: float, outcome) -> asyncio.Future:
    loop = asyncio.get_running_loop()
    future = loop.create_future()

    def settle():
        if future.done():  # the router gave up on it (deadline, shutdown)
            return
        if isinstance(outcome, Exception):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)
    loop.call_later(seconds, settle)
    return future


@event_handler("later:echo")
def echo_later(data):
    return resolved_after(data.get("seconds", 0.05), {"echo": data.get("text")})


@event_handler("later:refuse")
def refuse_later(data):
    return resolved_after(0.01, KSIError("conflict", "refused later", {"why": "asked to"}))


@event_handler("later:never")
def never(data):
    return asyncio.get_running_loop().create_future()


@event_handler("later:ask")
async def ask(data, ctx):
    return {"asked": await ctx.emit("later:echo", {"text": "through emit"})}


@event_handler("later:owed_forever", timeout=0.3)
def owed_forever(data, ctx):
    """Owes its reply (ctx.reply_later()) and never settles it: the router's sweep answers."""
    return ctx.reply_later()
