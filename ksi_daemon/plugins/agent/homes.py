"""Cluster mode in the agent plugin: where each agent runs, and the `AgentsHere` side of the
seam (cluster_seam.py) that the cluster plugin calls.

A mixin of AgentPlugin: every method here runs only when the plugin has an `AgentCluster`
(`self.cluster`), found through the `ksi_agent_cluster` hook; the single daemon never calls
them. Routing: a request for an agent that runs on another node is forwarded to it. Moving: the
cluster says when this node takes an agent over (`adopt`, from the shared checkpoint, fenced)
and when it must stop one at once (`give_up`).
"""
from __future__ import annotations

import asyncio

import structlog
from pydantic import ValidationError

from ...protocol import CONFLICT, NOT_FOUND, UNAVAILABLE, UNKNOWN_EVENT, VALIDATION_ERROR, \
    KSIError
from . import store
from .agent import Agent
from .forwarded import Forwarded
from .models import AgentIdRequest, SendRequest, SpawnRequest
from .schedules import Schedule

FORWARD_TIMEOUT_S = 30.0  # a forwarded request other than agent:send (a spawn may start MCP)
RESUMING_RETRY_AFTER_S = 0.5  # a resumption is a checkpoint read and two writes
RECORD_KEYS = ("agent_id", "profile", "status", "created_at", "session_id", "messages_handled")
log = structlog.get_logger("ksi.plugin.agent")


class AgentHomes:
    """AgentPlugin's cluster side (it has `cluster`, `agents`, `runtime`, the checkpoint stores
    and the handlers these methods call)."""

    def _home_elsewhere(self, agent_id: str) -> str | None:
        """The node an agent runs on, if it is not this one (None in a single daemon)."""
        if self.cluster is None or agent_id in self.agents or self.cluster.resuming(agent_id):
            return None
        home = self.cluster.home_of(agent_id)
        return home if home is not None and home != self.cluster.node_id else None

    def _not_running_here(self, agent_id: str) -> KSIError | None:
        """Why a known agent that is not in `agents` cannot be reached here (None: it is not
        known), with when to ask again: it is being resumed here, or its lease still names a
        node that does not run it (this one before a restart or a fence) until it expires."""
        if self.cluster is None:
            return None
        me = self.cluster.node_id
        if self.cluster.resuming(agent_id):
            return KSIError(UNAVAILABLE, f"agent {agent_id} is moving to node {me}, which is "
                            "resuming it from its checkpoint (its last node stopped or lost its "
                            "lease); ask again in a moment", {
                                "agent_id": agent_id, "node": me, "resuming": True,
                                "retry_after_s": RESUMING_RETRY_AFTER_S})
        home = self.cluster.home_of(agent_id)
        if home is None and not self.cluster.serving:
            # Unknown here, but perhaps known to the cluster this node cannot hear yet
            return KSIError(UNAVAILABLE, f"node {me} does not hear the cluster just now (NATS "
                            "unreachable, or still connecting after a start), so it cannot say "
                            f"where agent {agent_id} runs; ask again in a moment", {
                                "agent_id": agent_id, "node": me, "resuming": False,
                                "retry_after_s": RESUMING_RETRY_AFTER_S})
        if home is None:
            return None
        return KSIError(UNAVAILABLE, f"agent {agent_id} is not running anywhere just now: its "
                        f"lease still names node {home}, which does not run it (it stopped or "
                        "lost NATS); it resumes on a node once that lease expires", {
                            "agent_id": agent_id, "node": home, "resuming": False,
                            "retry_after_s": self.cluster.lease_ttl_s})

    async def _forward(self, node_id: str, event: str, data, ctx, timeout_s=FORWARD_TIMEOUT_S,
                       pushes_back: bool = False):
        """`pushes_back`: the agent's reply is pushed to the caller later, as on a single
        daemon; it comes back here and is pushed from this node, the caller's."""
        return await self.cluster.forward(
            node_id, event, data.model_dump(mode="json", exclude_none=True),
            ctx.correlation_id, timeout_s, ctx.push if pushes_back else None)

    async def answer_forwarded(self, event: str, data: dict, correlation_id: str | None,
                               push_back=None):
        here = {"agent:send": (SendRequest, self._send_here),
                "agent:terminate": (AgentIdRequest, self._terminate_here),
                "agent:info": (AgentIdRequest, self._info_here),
                "agent:spawn": (SpawnRequest, self._spawn_here),
                "agent:interrupt": (AgentIdRequest, self._interrupt_here),
                "agent:restart": (AgentIdRequest, self._restart_here)}.get(event)
        if here is None:
            raise KSIError(UNKNOWN_EVENT, f"{event} is not forwarded between nodes")
        model, handler = here
        try:
            request = model.model_validate(data)
        except ValidationError as exc:
            raise KSIError(VALIDATION_ERROR, str(exc), exc.errors(include_url=False)) from None
        pushes = None if push_back is None else lambda event, data: self._in_background(
            self._push_to_asking_node(push_back, event, data, correlation_id))
        answer = handler(request, Forwarded(correlation_id, pushes))
        return await answer if asyncio.iscoroutine(answer) else answer

    async def _push_to_asking_node(self, push_back, event: str, data, correlation_id) -> None:
        """The asking node raises the push for its client and every node's subscribers; if it
        does not take it (gone, cut off), it is raised here so that subscribers still see it."""
        if not await push_back(event, data):
            self.context.push(event, data, correlation_id)

    async def adopt(self, agent_id: str) -> None:
        """Resume an agent whose lease this node has just taken, from its shared checkpoint:
        its pending messages are answered here, a turn cut off by the old node's crash again.
        The first write names the revision read, so that any later write of the old home is
        refused (the fence)."""
        if self.runtime.stopping:  # the lease goes back; another node resumes it
            raise KSIError(UNAVAILABLE, "this node is shutting down")
        if agent_id in self.agents:
            return
        found = await self.shared_checkpoints.read(agent_id)
        if found is None or found.record["agent"]["status"] == "terminated":
            raise KSIError(NOT_FOUND, f"agent {agent_id} has no checkpoint to resume from")
        record = found.record
        revision = await self.shared_checkpoints.write(agent_id, record,
                                                       if_revision=found.revision)
        await self.checkpoints.write(agent_id, record)
        self.copier.adopted(agent_id, revision)
        messages = [{**m, "agent_id": agent_id} for m in record["messages"]]
        self.runtime.continue_seq_after(max((m["seq"] for m in messages), default=0))
        unpublished = self._restore(store.Loaded(agents=[record["agent"]],
                                                 messages={agent_id: messages}))
        agent = self.agents[agent_id]
        for row in record.get("schedules", ()):
            self.scheduler.add(Schedule(**{**row, "agent_id": agent_id}))
        await self._attach_restored(agent)
        # Its topics' inbox (a consumer of the cluster's, at the agent's position) is read here
        # from now on; the old home stops reading it at its next message for the agent. Not
        # awaited: the agent takes requests meanwhile, and its inbox keeps what comes.
        self._in_background(self._resume_topics(agent_id))
        if agent.status == "running":
            self.runtime.start(agent)
        for owner, message_id, topic, text in unpublished:
            await self.runtime.publish_reply(owner, message_id, topic, text)
        await self.context.emit("agent:status", {
            "agent_id": agent_id, "status": agent.status,
            "reason": f"resumed on node {self.cluster.node_id}"})

    def give_up(self, agent_id: str, why: str) -> None:
        agent = self.agents.pop(agent_id, None)
        if agent is None:
            return
        agent.fail_waiters(KSIError(UNAVAILABLE, f"agent {agent_id} stopped on node "
                                                 f"{self.cluster.node_id}: {why}; it resumes "
                                                 "on another node"))
        self._in_background(self._stop_given_up(agent, why))

    def _in_background(self, work) -> None:
        task = asyncio.ensure_future(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def superseded(self, agent_id: str) -> None:
        """A copy of the agent's checkpoint was refused: someone wrote it since this node did.
        Stop it here, and give its lease up if this node still holds it, so that whoever
        resumes it next starts from what is stored."""
        self.give_up(agent_id, "its checkpoint was written by another node")
        self._in_background(self.cluster.release(agent_id))

    async def _stop_given_up(self, agent: Agent, why: str) -> None:
        await self.runtime.stop_task(agent)
        for schedule in self.scheduler.of_agent(agent.agent_id):
            self.scheduler.remove(schedule.schedule_id)
        try:
            await self._write_here(store.delete_agent, agent.agent_id)
        except KSIError:
            pass
        await self._detach_mcp_servers(agent)
        await self._quietly("agent:status", {"agent_id": agent.agent_id, "status": "moved",
                                             "reason": why})

    async def _claim(self, agent_id: str) -> None:
        """Cluster mode: the id is this node's once its lease is, and no other agent of that
        id waits in the shared store to be resumed; its first copy names what is there."""
        await self.cluster.claim(agent_id)
        found = await self.shared_checkpoints.read(agent_id)
        if found is not None and found.record["agent"]["status"] != "terminated":
            raise KSIError(CONFLICT, f"agent {agent_id} already exists in the cluster (it is "
                           "being resumed after its node stopped)", {"agent_id": agent_id})
        self.copier.adopted(agent_id, found.revision if found is not None else 0)

    def _cluster_directory(self, status: str | None) -> list[dict]:
        """Every agent of the cluster: this node's as they are now, the others' (and one being
        resumed here this moment) as their last checkpoint says."""
        me = self.cluster.node_id
        agents = [{**a.record(), "node": me} for a in self.agents.values()]
        agents += [{**{k: row[k] for k in RECORD_KEYS}, "node": row["node"]}
                   for row in self.cluster.directory() if row["agent_id"] not in self.agents]
        return [a for a in agents if status is None or a["status"] == status]
