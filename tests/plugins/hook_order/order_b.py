"""Leaves its name on every completion, to show the order the completion hooks run in.

order_c has priority 50, order_a and order_b the default 100: the order must be c, a, b
(priority, then name), not pluggy's last-registered-first (c, b, a).
"""
from ksi_daemon.plugin_base import hookimpl

PLUGIN_METADATA = {"priority": 100}


@hookimpl
def ksi_completion_pre_call(context):
    context.metadata.setdefault("pre_call_order", []).append("b")
    # what post_response can see of the pre-call: the messages it sent
    context.messages[-1]["content"] += " [b]"


@hookimpl
async def ksi_completion_post_response(context):
    context.annotations.setdefault("post_response_order", []).append("b")
    context.annotations["pre_call_order"] = [
        word.strip("[]") for word in context.messages[-1]["content"].split() if word[0] == "["]
