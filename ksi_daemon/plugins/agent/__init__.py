"""The `agent` events: supervised agents with profiles, inboxes and sessions.

    agent:spawn {profile? | config?, agent_id?, task?, session_id?, model?, max_turns?, topics?}
    agent:terminate / agent:restart / agent:info {agent_id}
    agent:list {status?}
    agent:send {agent_id, content, sender?, wait?, timeout_s?}
    agent:interrupt {agent_id}
    agent:schedule {agent_id, every_s | cron, prompt} / agent:schedules {agent_id?}
    agent:unschedule {schedule_id}
    agent:profiles {}
    agent:inbox   (emitted by the message plugin: a topic message for one of our agents)

Each agent is a task (supervisor.py) answering its inbox through completion:request; agents and
their inboxes live in agents.db under the plugin's data directory (store.py), written ahead of
every reply, so a restarted daemon carries on every conversation where it stood.

In cluster mode (an `AgentCluster` from the `ksi_agent_cluster` hook: cluster_seam.py) each
agent runs on one node: every write of an agent is followed by its checkpoint in the cluster,
fenced by the node's lease, before anyone is told; requests for an agent of another node are
forwarded there; and a node that loses an agent's lease stops it at once (docs/CLUSTER.md).
"""
from __future__ import annotations

import asyncio
import os
import time
from collections import OrderedDict
from pathlib import Path

import structlog

from ...event_system import event_handler
from ...plugin_base import BasePlugin, hookimpl
from ...plugin_types import PluginCapabilities, PluginMetadata
from ...protocol import (CONFLICT, NOT_FOUND, TIMEOUT, UNAVAILABLE, UNKNOWN_EVENT,
                         VALIDATION_ERROR, KSIError)
from ...storage.plugin_database import PluginDatabase
from ...storage.sqlite_writer import SqliteWriter, WriterStopped
from . import hookspecs, store
from .agent import CALLER, DIRECT, SESSION_ID_MAX, TOPIC, Agent, Message
from .checkpoints import CheckpointCopier, agents_changed_by
from .forwarded import caller_of
from .homes import RECORD_KEYS, AgentHomes
from .identities import IdentityBook
from .models import (AgentIdRequest, AgentSettings, InboxDelivery, InfoReply, InterruptReply,
                     ListReply, ListRequest, ProfilesReply, ProfilesRequest, ScheduleRecord,
                     ScheduleRequest, SchedulesReply, SchedulesRequest, SendReply, SendRequest,
                     SpawnReply, SpawnRequest, TerminateReply, UnscheduleReply,
                     UnscheduleRequest)
from .profiles import Profile, ProfileBook
from .schedules import Schedule, Scheduler
from .sqlite_checkpoints import SqliteAgentStore
from .store_seam import AgentStore
from .supervisor import AgentRuntime, text_of, turn_record

DB_FILE_NAME = "agents.db"
DEFAULT_PROFILE = "assistant"
STOP_GRACE_S = 3.0  # a turn whose completion already finished gets this long to be recorded
FORWARD_MARGIN_S = 5.0  # a forwarded agent:send waits this much longer than its own timeout
log = structlog.get_logger("ksi.plugin.agent")


class AgentPlugin(AgentHomes, BasePlugin):
    def __init__(self):
        super().__init__(
            PluginMetadata(name="agent", version="0.1.0", priority=60,
                           description="Supervised AI agents", dependencies=["message"],
                           hookspecs=[hookspecs]),
            PluginCapabilities(event_namespaces=["agent"], provides_services=["agent"]))
        self.writer: SqliteWriter | None = None
        self.agents: dict[str, Agent] = {}
        self.terminated: OrderedDict[str, dict] = OrderedDict()
        self.cluster = None  # an AgentCluster in cluster mode
        self._background: set[asyncio.Task] = set()

    # ---- lifecycle ---------------------------------------------------------------------------

    @hookimpl
    async def ksi_startup(self, config, context):
        self.cluster = await context.hook("ksi_agent_cluster").call_first(config=config)
        if self.cluster is None and config["cluster"]["nats_url"]:
            raise RuntimeError("cluster mode is configured but no plugin supplied the agents' "
                               "cluster (is the cluster plugin disabled?)")
        settings = self.settings = AgentSettings.model_validate(context.config or {})
        var_dir = Path(config["daemon"]["var_dir"])
        self.book = ProfileBook(Path(settings.profiles_dir).expanduser() if settings.profiles_dir
                                else var_dir / "agent_profiles")
        self.book.refresh()
        self.identities = IdentityBook(Path(settings.identities_file).expanduser()
                                       if settings.identities_file else None)
        path = Path(settings.db_path).expanduser() if settings.db_path else \
            Path(context.data_dir) / DB_FILE_NAME
        self.database = PluginDatabase.open(
            path, name="agent", synchronous=settings.synchronous,
            create_schema=store.create_schema, deadline_s=config["daemon"]["event_timeout"],
            reader=False, load=store.load if self.cluster is None else store.load_in_cluster,
            report_degraded=context.report_degraded)
        self.writer, loaded = self.database.writer, self.database.loaded
        # The node's own checkpoints (agents.db), and in cluster mode the shared store each
        # agent's checkpoint is copied to after every change (checkpoints.py).
        self.checkpoints: AgentStore = SqliteAgentStore(self.writer)
        shared = await context.hook("ksi_agent_store").call_first(config=config)
        self.shared_checkpoints: AgentStore | None = shared
        self.copier = CheckpointCopier(self.checkpoints, shared) if shared is not None else None
        if self.cluster is not None:
            if self.copier is None:
                raise RuntimeError("the agents' cluster needs a shared store of checkpoints "
                                   "(ksi_agent_store)")
            # Fenced: a copy refused because another node wrote the agent since stops it here.
            self.copier.on_superseded = self.superseded
            self.cluster.open(self)
        self.runtime = AgentRuntime(settings, self.context.emit, self._write, self.agents)
        self.runtime.continue_seq_after(loaded.last_seq)
        self.runtime.after_last_turn = self._end_schedules
        self._unpublished = self._restore(loaded)
        self.scheduler = Scheduler(self._fire)
        for row in loaded.schedules:
            if row["agent_id"] in self.agents:
                self.scheduler.add(Schedule(**row))
        self._scheduling: asyncio.Task | None = None
        log.info("agent_store_open", path=str(path), agents=len(self.agents),
                 terminated=len(self.terminated))

    def _restore(self, loaded: store.Loaded) -> list[tuple]:
        """Rebuild the agents from their rows; return topic replies that were not published."""
        unpublished = []
        for row in loaded.terminated:
            self._remember_terminated(terminated_record(row))
        for row in loaded.agents:
            agent = Agent(row["agent_id"], Profile.model_validate_json(row["config"]),
                          row["session_id"], row["created_at"], self.settings.recent_kept)
            # A crash while restarting was a stop like any other: it runs again.
            agent.status = "failed" if row["status"] == "failed" else "running"
            agent.turns, agent.messages_handled = row["turns"], row["messages_handled"]
            agent.restarts, agent.error = row["restarts"], row["error"]
            for m in loaded.messages.get(agent.agent_id, ()):
                message = Message(m["message_id"], m["seq"], m["content"], m["reply_to"],
                                  m["sender"], m["topic"], m["attempts"])
                if m["state"] == store.PENDING:
                    agent.inbox.append(message)
                else:
                    agent.recent.append(turn_record(message, m["state"], m["reply"],
                                                    m["request_id"], m["turn"]))
                    if m["state"] == store.ANSWERED:
                        unpublished.append((agent.agent_id, m["message_id"], m["topic"],
                                            m["reply"]))
            self.agents[agent.agent_id] = agent
        return unpublished

    @hookimpl
    async def ksi_ready(self, context):
        # Their MCP servers come back attached, not started: each starts at its first use.
        await asyncio.gather(*(self._attach_restored(agent) for agent in self.agents.values()))
        for agent in self.agents.values():
            if agent.status == "running":
                self.runtime.start(agent)
        # Schedules due while the daemon was down fire now, once each (schedules.py).
        self._scheduling = asyncio.get_running_loop().create_task(self.scheduler.run(),
                                                                  name="agent-schedules")
        # Topic subscriptions came back paused: resume them, handing over what arrived meanwhile
        # (an agent with no stored subscription answers validation_error, which is fine).
        await asyncio.gather(*(self._resume_topics(agent_id) for agent_id in list(self.agents)))
        for agent_id, message_id, topic, text in self._unpublished:
            await self.runtime.publish_reply(agent_id, message_id, topic, text)
        self._unpublished = []
        if self.copier is not None:
            # What agents.db holds reaches the shared store once it answers (NATS may still be
            # connecting): the restored agents are copied by the retrying service.
            self.copier.waiting.update(self.agents)
            return [self.copier.retry_waiting()]
        return []

    @hookimpl
    def ksi_completion_agent_here(self, agent_id):
        # A single daemon runs every agent it ever had, so it has nothing to say; a node runs
        # only the agents whose lease it holds, which are exactly those in self.agents (none
        # at start: they come back as their leases come free).
        if self.cluster is None:
            return None
        return agent_id in self.agents

    async def _attach_restored(self, agent: Agent) -> None:
        try:
            await self._attach_mcp_servers(agent.agent_id, agent.profile)
        except KSIError as exc:  # the agent still runs, without those tools
            log.warning("agent_mcp_servers_not_attached", agent_id=agent.agent_id,
                        error=exc.message)

    async def _attach_mcp_servers(self, agent_id: str, profile: Profile,
                                  correlation_id: str | None = None) -> None:
        """Hand the profile's MCP servers to the tools plugin, which checks them (a bad one is
        the caller's validation_error) and starts them when a turn first needs them."""
        if not profile.mcp_servers:
            return
        not_running = KSIError(UNAVAILABLE, "this profile lists mcp_servers, but the tools "
                                            "plugin is not running")
        try:
            attached = await self.context.emit("tools:mcp_attach", {
                "agent_id": agent_id, "owner": profile.name, "servers": profile.mcp_servers},
                correlation_id)
        except KSIError as exc:
            if exc.code == UNKNOWN_EVENT:
                raise not_running from None
            if exc.code == VALIDATION_ERROR and isinstance(exc.details, list):
                raise mcp_servers_invalid(exc.details) from None
            raise
        if not isinstance(attached, dict):  # nobody answered the event
            raise not_running

    async def _resume_topics(self, agent_id: str) -> None:
        try:
            await self.context.emit("message:subscribe", {"agent_id": agent_id, "replay": True})
        except KSIError as exc:
            if exc.code != VALIDATION_ERROR:
                log.warning("agent_topics_not_resumed", agent_id=agent_id, error=exc.message)

    @hookimpl
    def ksi_stopping(self, context):
        # No new turns from now on; a turn already asking its model may finish (completion
        # lets running calls end within the shutdown deadline) and is then recorded.
        self.runtime.stopping = True
        self._stop_scheduling()
        stopping = KSIError(UNAVAILABLE, "the daemon is shutting down; the message is kept and "
                                         "answered after the restart")
        for agent in self.agents.values():
            agent.fail_waiters(stopping, keep_current=True)
        self.runtime.wake_all()

    @hookimpl
    async def ksi_shutdown(self, context):
        if self.writer is None:
            return
        self.runtime.stopping = True
        self._stop_scheduling()
        self.runtime.wake_all()
        tasks = list(self.runtime.tasks)
        if tasks:
            await asyncio.wait(tasks, timeout=STOP_GRACE_S)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=1.0)
        await self.database.close()

    def _stop_scheduling(self) -> None:
        if self._scheduling is not None:
            self._scheduling.cancel()
            self._scheduling = None

    # ---- plumbing ----------------------------------------------------------------------------

    async def _write_here(self, op, *args):
        try:
            return await self.writer.submit(op, *args)
        except WriterStopped:
            raise KSIError(UNAVAILABLE, "the daemon is shutting down") from None

    async def _write(self, op, *args):
        """A write of agents.db; in cluster mode each agent it changed is then copied to the
        shared store before the caller goes on. With leases, the copy of the agent the write is
        about must succeed: otherwise its effect is told to no one (the caller gets the
        KSIError), and a copy refused as superseded stops the agent here."""
        result = await self._write_here(op, *args)
        if self.copier is not None:
            await self.copier.copy(agents_changed_by(op, args), strict=self.cluster is not None)
        return result

    def _live(self, agent_id: str) -> Agent:
        agent = self.agents.get(agent_id)
        if agent is None:
            if agent_id in self.terminated:
                raise KSIError(CONFLICT, f"agent {agent_id} was terminated")
            elsewhere = self._not_running_here(agent_id)
            if elsewhere is not None:
                raise elsewhere
            raise KSIError(NOT_FOUND, f"no agent {agent_id}; see agent:list")
        return agent

    def _remember_terminated(self, record: dict) -> None:
        self.terminated[record["agent_id"]] = record
        self.terminated.move_to_end(record["agent_id"])
        while len(self.terminated) > self.settings.keep_terminated:
            self.terminated.popitem(last=False)

    # ---- events ------------------------------------------------------------------------------

    @event_handler("agent:spawn", returns=SpawnReply)
    async def spawn(self, data: SpawnRequest, ctx):
        """Start an agent from a profile (or an inline config); `task` is its first message.
        In cluster mode on `node` (default: this one)."""
        if data.node is not None:
            if self.cluster is None:
                raise KSIError(VALIDATION_ERROR, "node is for cluster mode; this daemon is "
                               "not in a cluster", [{"loc": ["node"], "msg": "no cluster"}])
            if data.node != self.cluster.node_id:
                return await self._forward(data.node, "agent:spawn", data, ctx,
                                           pushes_back=data.task is not None)
        return await self._spawn_here(data, ctx)

    async def _spawn_here(self, data: SpawnRequest, ctx):
        profile = self._profile_for(data)
        agent_id = data.agent_id or f"{profile.name}-{os.urandom(4).hex()}"
        if agent_id in self.agents:
            raise KSIError(CONFLICT, f"agent {agent_id} already exists",
                           {"agent_id": agent_id, "status": self.agents[agent_id].status})
        now = time.time()
        # A new session is named after the agent, cut to what completion accepts.
        session_id = data.session_id or f"{agent_id[:SESSION_ID_MAX - 9]}-{os.urandom(4).hex()}"
        agent = Agent(agent_id, profile, session_id, now, self.settings.recent_kept)
        self.agents[agent_id] = agent  # taken from here on, even while the write is pending
        try:
            if self.cluster is not None:
                await self._claim(agent_id)
            await self._attach_mcp_servers(agent_id, profile, ctx.correlation_id)
        except BaseException:
            self.agents.pop(agent_id, None)
            if self.cluster is not None:
                await asyncio.shield(self.cluster.release(agent_id))
            raise
        first = None
        if data.task is not None:
            first = self.runtime.new_message(data.task, DIRECT)
            first.ctx = caller_of(ctx)
            first.correlation_id = ctx.correlation_id
        row = {"agent_id": agent_id, "profile": profile.name, "session_id": agent.session_id,
               "config": profile.model_dump_json(), "status": "running", "created_at": now}
        try:
            await self._write(store.insert_agent, row, first.row(agent_id, now) if first else None)
            if data.topics:
                await self.context.emit("message:subscribe", {
                    "agent_id": agent_id, "topics": data.topics}, ctx.correlation_id)
        except BaseException:
            self.agents.pop(agent_id, None)
            await asyncio.shield(self._forget(agent_id))
            await asyncio.shield(self._detach_mcp_servers(agent))
            if self.cluster is not None:
                await asyncio.shield(self.cluster.release(agent_id))
            raise
        self.terminated.pop(agent_id, None)
        if first is not None:
            agent.deliver(first)
        self.runtime.start(agent)
        await self.context.emit("agent:spawned", {
            "agent_id": agent_id, "profile": profile.name, "session_id": agent.session_id},
            ctx.correlation_id)
        return {"agent_id": agent_id, "status": agent.status, "profile": profile.name,
                "session_id": agent.session_id}

    def _profile_for(self, data: SpawnRequest) -> Profile:
        if data.config is not None:
            profile = data.config
        else:
            name = data.profile or DEFAULT_PROFILE
            profile = self.book.get(name)
            if profile is None:
                raise KSIError(NOT_FOUND, f"no agent profile {name!r}; see agent:profiles",
                               {"profile": name, "profiles": sorted(self.book.profiles())})
        changes = {k: v for k, v in (("model", data.model), ("max_turns", data.max_turns),
                                     ("on_busy", data.on_busy)) if v is not None}
        return profile.model_copy(update=changes) if changes else profile

    async def _detach_mcp_servers(self, agent: Agent) -> None:
        """The agent ended: its MCP servers stop when no other agent uses them."""
        if agent.profile.mcp_servers:
            await self._quietly("tools:mcp_detach", {"agent_id": agent.agent_id})

    async def _forget(self, agent_id: str) -> None:
        try:
            await self._write(store.delete_agent, agent_id)
        except KSIError:
            pass

    @event_handler("agent:terminate", returns=TerminateReply)
    async def terminate(self, data: AgentIdRequest, ctx):
        """Stop an agent for good: its task ends, its inbox and topic subscriptions go."""
        home = self._home_elsewhere(data.agent_id)
        if home is not None:
            return await self._forward(home, "agent:terminate", data, ctx)
        return await self._terminate_here(data, ctx)

    async def _terminate_here(self, data: AgentIdRequest, ctx):
        agent = self.agents.get(data.agent_id)
        if agent is None:
            detail = " (already terminated)" if data.agent_id in self.terminated else ""
            raise KSIError(NOT_FOUND, f"no running agent {data.agent_id}{detail}")
        del self.agents[data.agent_id]
        await self.runtime.stop_task(agent)
        for schedule in self.scheduler.of_agent(agent.agent_id):
            self.scheduler.remove(schedule.schedule_id)  # store.terminate deletes their rows
        agent.status = "terminated"
        agent.fail_waiters(KSIError(CONFLICT, f"agent {agent.agent_id} was terminated"))
        try:
            await self._write(store.terminate, agent.agent_id, self.settings.keep_terminated)
        finally:
            # After the shared checkpoint says terminated, so that no node resumes it; if that
            # copy failed, another node may (the caller was told unavailable).
            if self.cluster is not None:
                await self.cluster.release(agent.agent_id)
        self._remember_terminated({**agent.info(), "pending": 0, "recent": []})
        await self._quietly("message:unsubscribe", {"agent_id": agent.agent_id})
        await self._quietly("mcp:forget_agent", {"agent_id": agent.agent_id})  # its tokens
        await self._detach_mcp_servers(agent)
        await self.context.emit("agent:terminated", {
            "agent_id": agent.agent_id, "reason": "terminated by request"}, ctx.correlation_id)
        return {"agent_id": agent.agent_id, "status": "terminated"}

    async def _quietly(self, event: str, data: dict) -> None:
        try:
            await self.context.emit(event, data)
        except KSIError as exc:
            log.info("agent_cleanup_refused", event_name=event, error=exc.message)

    @event_handler("agent:restart", returns=TerminateReply)
    async def restart(self, data: AgentIdRequest, ctx):
        """Run an agent again: a failed one with fresh restarts, a running one in a new task."""
        home = self._home_elsewhere(data.agent_id)
        if home is not None:
            return await self._forward(home, "agent:restart", data, ctx)
        return await self._restart_here(data, ctx)

    async def _restart_here(self, data: AgentIdRequest, ctx):
        agent = self._live(data.agent_id)
        cancelled = await self.runtime.stop_task(agent)
        # A cancelled completion would answer its request_id with "cancelled": ask anew.
        attempts = None
        if cancelled is not None:
            cancelled.attempts += 1
            attempts = (cancelled.message_id, cancelled.attempts)
        agent.status, agent.error, agent.failures = "running", None, 0
        await self._write(store.save_status, agent.agent_id, "running", agent.restarts, None,
                          attempts)
        if self.agents.get(agent.agent_id) is agent and agent.task is None:
            self.runtime.start(agent)
        await self.context.emit("agent:status", {
            "agent_id": agent.agent_id, "status": "running", "reason": "restarted by request"},
            ctx.correlation_id)
        return {"agent_id": agent.agent_id, "status": agent.status}

    @event_handler("agent:list", returns=ListReply)
    def list_agents(self, data: ListRequest):
        """Agents and their states (terminated ones only when asked by status)."""
        if data.status == "terminated":
            agents = [{k: r[k] for k in RECORD_KEYS} for r in self.terminated.values()]
        elif self.cluster is None:
            agents = [a.record() for a in self.agents.values()
                      if data.status is None or a.status == data.status]
        else:
            agents = self._cluster_directory(data.status)
        # Both figures are counted now, from the objects themselves: a leaked agent task shows.
        return {"agents": agents, "count": len(agents), "tasks_alive": len(self.runtime.tasks),
                "daemon_tasks": len(asyncio.all_tasks())}

    @event_handler("agent:info", returns=InfoReply)
    async def info(self, data: AgentIdRequest, ctx):
        """One agent: its record, model, turns, restarts, last error and recent turns."""
        home = self._home_elsewhere(data.agent_id)
        if home is not None:
            return await self._forward(home, "agent:info", data, ctx)
        return self._info_here(data, ctx)

    def _info_here(self, data: AgentIdRequest, ctx=None):
        agent = self.agents.get(data.agent_id)
        record = agent.info() if agent is not None else self.terminated.get(data.agent_id)
        if record is None:
            elsewhere = self._not_running_here(data.agent_id)
            if elsewhere is not None:
                raise elsewhere
            raise KSIError(NOT_FOUND, f"no agent {data.agent_id}; see agent:list")
        identity = self.identities.of(data.agent_id)
        if self.cluster is not None:
            record = {**record, "node": self.cluster.node_id}
        return record if identity is None else {**record, "identity": identity}

    @event_handler("agent:send", returns=SendReply, timeout=None)
    async def send(self, data: SendRequest, ctx):
        """Put a message in an agent's inbox; with wait, answer with the agent's reply."""
        home = self._home_elsewhere(data.agent_id)
        if home is not None:
            waits = (data.timeout_s or self.settings.send_timeout_s) if data.wait else 0.0
            return await self._forward(home, "agent:send", data, ctx,
                                       waits + FORWARD_MARGIN_S, pushes_back=not data.wait)
        return await self._send_here(data, ctx)

    async def _send_here(self, data: SendRequest, ctx):
        agent = self._live(data.agent_id)
        if data.sender == agent.agent_id:
            raise KSIError(VALIDATION_ERROR, "an agent does not answer its own messages",
                           [{"loc": ["sender"], "msg": "equals agent_id"}])
        if data.wait and agent.status == "failed":
            raise KSIError(CONFLICT, f"agent {agent.agent_id} failed: {agent.error}; "
                                     "agent:restart it first")
        message = self.runtime.new_message(data.content, CALLER if data.wait else DIRECT,
                                           sender=data.sender)
        message.correlation_id = ctx.correlation_id
        policy = agent.profile.on_busy
        busy = agent.status == "running" and bool(agent.inbox)
        if busy and policy == "reject":
            raise KSIError(CONFLICT, f"agent {agent.agent_id} is busy with a turn and its "
                                     "on_busy policy is reject; send again when it is done",
                           {"agent_id": agent.agent_id, "on_busy": policy,
                            "pending": len(agent.inbox)})
        await self._write(store.add_message, message.row(agent.agent_id, time.time()))
        if self.agents.get(agent.agent_id) is not agent:
            raise KSIError(CONFLICT, f"agent {agent.agent_id} was terminated meanwhile")
        running = agent.status != "failed"
        if not data.wait:
            message.ctx = caller_of(ctx)
            agent.deliver(message)
            await self._take_over_if_busy(agent, busy)
            return {"message_id": message.message_id, "delivered": running}
        waiter = message.waiter = asyncio.get_running_loop().create_future()
        agent.deliver(message)
        await self._take_over_if_busy(agent, busy)
        timeout_s = data.timeout_s or self.settings.send_timeout_s
        try:
            async with asyncio.timeout(timeout_s):
                reply = await waiter
        except TimeoutError:
            message.waiter = None
            raise KSIError(TIMEOUT, f"agent {agent.agent_id} did not answer within {timeout_s:g}"
                                    " s; the message stays in its inbox") from None
        return {"message_id": message.message_id, "delivered": True, "reply": reply}

    async def _take_over_if_busy(self, agent: Agent, busy: bool) -> None:
        """The interrupt and rollback policies: the running turn stops and the inbox goes on,
        the new message included."""
        if busy and agent.profile.on_busy in ("interrupt", "rollback"):
            await self.runtime.interrupt(agent, forget=agent.profile.on_busy == "rollback")

    @event_handler("agent:interrupt", returns=InterruptReply)
    async def interrupt(self, data: AgentIdRequest, ctx):
        """Stop the agent's running turn now (its completion is cancelled); it takes the next
        message. An idle agent answers interrupted: false."""
        home = self._home_elsewhere(data.agent_id)
        if home is not None:
            return await self._forward(home, "agent:interrupt", data, ctx)
        return await self._interrupt_here(data, ctx)

    async def _interrupt_here(self, data: AgentIdRequest, ctx):
        agent = self._live(data.agent_id)
        return {"agent_id": agent.agent_id, **await self.runtime.interrupt(agent)}

    # ---- schedules ---------------------------------------------------------------------------

    @event_handler("agent:schedule", returns=ScheduleRecord)
    async def schedule(self, data: ScheduleRequest, ctx):
        """Wake an agent with `prompt` every `every_s` seconds or on a cron (UTC)."""
        agent = self._live(data.agent_id)
        if agent.turns >= agent.profile.max_turns:
            raise KSIError(CONFLICT, f"agent {agent.agent_id} has given its max_turns "
                                     f"({agent.profile.max_turns}) and answers no more")
        if len(self.scheduler.of_agent(agent.agent_id)) >= self.settings.max_schedules:
            raise KSIError(CONFLICT, f"agent {agent.agent_id} has {self.settings.max_schedules}"
                                     " schedules, the most plugins.agent.max_schedules allows")
        schedule = Schedule(f"s-{os.urandom(6).hex()}", agent.agent_id, data.every_s, data.cron,
                            data.prompt, time.time())
        await self._write(store.insert_schedule, schedule.row())
        if self.agents.get(agent.agent_id) is not agent:
            await self._write(store.delete_schedule, schedule.schedule_id)
            raise KSIError(CONFLICT, f"agent {agent.agent_id} was terminated meanwhile")
        self.scheduler.add(schedule)
        return schedule.record()

    @event_handler("agent:schedules", returns=SchedulesReply)
    def schedules(self, data: SchedulesRequest):
        """The schedules (of one agent, or all), with their next firing."""
        if data.agent_id is not None:
            self._live(data.agent_id)
            found = self.scheduler.of_agent(data.agent_id)
        else:
            found = list(self.scheduler.schedules.values())
        return {"schedules": [s.record() for s in found], "count": len(found)}

    @event_handler("agent:unschedule", returns=UnscheduleReply)
    async def unschedule(self, data: UnscheduleRequest):
        """End a schedule; a firing already in the inbox is still answered."""
        schedule = self.scheduler.schedules.get(data.schedule_id)
        if schedule is None:
            raise KSIError(NOT_FOUND, f"no schedule {data.schedule_id}; see agent:schedules")
        self.scheduler.remove(schedule.schedule_id)
        await self._write(store.delete_schedule, schedule.schedule_id)
        if self.copier is not None:
            await self.copier.copy([schedule.agent_id])
        return {"schedule_id": schedule.schedule_id, "agent_id": schedule.agent_id,
                "status": "unscheduled"}

    async def _fire(self, schedule: Schedule, now: float) -> None:
        """One firing: the prompt goes to the inbox, unless the last firing still waits there
        (then this one is coalesced into it); a wake-up never stops a running turn."""
        agent = self.agents.get(schedule.agent_id)
        if agent is None or agent.turns >= agent.profile.max_turns:
            await self._end_schedules(schedule.agent_id)
            return
        waiting = any(m.message_id == schedule.last_message_id and m is not agent.current
                      for m in agent.inbox)
        missed = schedule.missed_before(now)
        row = {**schedule.row(), "next_at": schedule.next_after(now)}
        message = None
        if waiting:
            row["coalesced"] += 1 + missed
        else:
            message = self.runtime.new_message(schedule.prompt, DIRECT, sender=schedule.sender)
            row.update(last_message_id=message.message_id, fired=row["fired"] + 1,
                       coalesced=row["coalesced"] + missed)
        try:
            await self._write(store.fire_schedule, row,
                              message.row(agent.agent_id, now) if message else None)
        except Exception as exc:  # noqa: BLE001 - skip this firing; the next one is on time
            log.error("agent_schedule_not_fired", schedule_id=schedule.schedule_id,
                      error=repr(exc))
            schedule.next_at = row["next_at"]
            return
        schedule.next_at, schedule.fired = row["next_at"], row["fired"]
        schedule.last_message_id, schedule.coalesced = row["last_message_id"], row["coalesced"]
        if message is not None and self.agents.get(agent.agent_id) is agent:
            agent.deliver(message)

    async def _end_schedules(self, agent_id: str) -> None:
        """An agent that answers no more (max_turns given) is woken no more."""
        schedules = self.scheduler.of_agent(agent_id)
        for schedule in schedules:
            self.scheduler.remove(schedule.schedule_id)
        if schedules:
            try:
                await self._write(store.delete_schedules_of, agent_id)
            except KSIError as exc:
                log.warning("agent_schedules_not_deleted", agent_id=agent_id, error=exc.message)

    @event_handler("agent:profiles", returns=ProfilesReply)
    def profiles(self, data: ProfilesRequest):
        """Built-in profiles and those in the profiles directory; bad files under errors."""
        self.book.refresh()
        entries = [{**profile.model_dump(), "source": source}
                   for profile, source in self.book.profiles().values()]
        return {"profiles": entries, "count": len(entries), "errors": self.book.errors()}

    @event_handler("agent:inbox", internal=True)
    async def inbox(self, data: InboxDelivery):
        """A topic message for an agent (from the message plugin); stored before it is taken."""
        agent = self.agents.get(data.agent_id)
        if agent is None:  # in cluster mode, one that runs on another node is that node's
            return {"accepted": False, "here": False} if self._home_elsewhere(data.agent_id) \
                else {"accepted": False}
        if data.sender == agent.agent_id:
            return {"accepted": False}
        message = self.runtime.new_message(text_of(data.content), TOPIC, sender=data.sender,
                                           topic=data.topic, message_id=data.message_id)
        if not await self._write(store.add_message, message.row(agent.agent_id, time.time())):
            return {"accepted": False, "duplicate": True}  # a replay of what we already have
        if self.agents.get(agent.agent_id) is agent:
            agent.deliver(message)
        return {"accepted": True}


def mcp_servers_invalid(details: list) -> KSIError:
    """The tools plugin's validation errors, told as the profile's field (whose caller never
    sent tools:mcp_attach)."""
    problems = [{**problem, "loc": ["mcp_servers", *problem.get("loc", [])[1:]]}
                for problem in details if isinstance(problem, dict)]
    said = "; ".join(f"{'.'.join(map(str, p['loc']))}: {p.get('msg')}" for p in problems)
    return KSIError(VALIDATION_ERROR, f"the profile's mcp_servers are not valid: {said}",
                    problems)


def terminated_record(row: dict) -> dict:
    """What agent:info still says about a terminated agent (its inbox and turns are gone)."""
    profile = Profile.model_validate_json(row["config"])
    return {"agent_id": row["agent_id"], "profile": row["profile"], "status": "terminated",
            "created_at": row["created_at"], "session_id": row["session_id"],
            "messages_handled": row["messages_handled"], "model": profile.model,
            "max_turns": profile.max_turns, "turns": row["turns"], "restarts": row["restarts"],
            "error": row["error"], "pending": 0, "system_prompt": profile.system_prompt,
            "recent": []}


ksi_plugin = AgentPlugin
