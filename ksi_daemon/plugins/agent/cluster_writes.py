"""Cluster mode: which agents a write of agents.db changes, and the context of a forwarded
request. Each such write is followed by the agent's checkpoint in the cluster (cluster_seam.py)
before its effect is told to anyone, so the node that resumes an agent after a crash finds every
message that was accepted and every turn that was answered."""
from __future__ import annotations

from . import store


def agents_changed_by(op, args: tuple) -> tuple[str, ...]:
    """The agents whose checkpoint `op(*args)` changes, the one it is about first."""
    if op is store.add_message:
        return (args[0][0],)
    if op is store.record_turn:
        forward = args[8]  # the reply as a message in another agent's inbox
        return (args[0],) if forward is None else (args[0], forward[0])
    if op in (store.save_status, store.mark_done):
        return (args[0],)
    if op is store.insert_agent:
        return (args[0]["agent_id"],)
    if op is store.fire_schedule and args[1] is not None:
        return (args[1][0],)
    return ()


class Forwarded:
    """The context of a request another node forwarded here: it has a correlation id, but no
    connection on this node to push to (replies to it are announced instead)."""
    __slots__ = ("correlation_id",)

    def __init__(self, correlation_id: str | None):
        self.correlation_id = correlation_id

    def push(self, event: str, data) -> None:
        pass  # the asking node has the connection; the reply goes back to it
