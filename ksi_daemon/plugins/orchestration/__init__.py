"""The `orchestration` events: agents spawned for a mode's roles talk in turn about a topic.

    orchestration:start {mode, topic, agents?, rounds?, model?, tools?, nodes?}
                                                  -> id, agents; turns follow as
        orchestration:turn pushes, then one orchestration:finished
    orchestration:status {orchestration_id?}    one (with its transcript), or all of them
    orchestration:terminate {orchestration_id}  stops it and terminates its agents
    orchestration:modes {}                      the modes, their roles and defaults

The agents are the agent plugin's (agent:spawn / agent:send {wait: true} / agent:terminate),
reached only through events. Orchestrations live in memory: a daemon that stops ends the running
ones as terminated (their agents too); finished ones stay visible for `finished_kept_s`.
Guide: docs/ORCHESTRATION.md.
"""
from __future__ import annotations

import asyncio
import os
import time
from collections import OrderedDict

from ...event_system import event_handler
from ...plugin_base import BasePlugin, hookimpl
from ...plugin_types import PluginCapabilities, PluginMetadata
from ...protocol import NOT_FOUND, RATE_LIMITED, UNAVAILABLE, KSIError
from .cast import spawn_cast, terminate_agents
from .modes import MODES
from .models import (ModesReply, ModesRequest, OrchestrationRequest, Settings,
                     StartReply, StartRequest, StatusReply, StatusRequest, TerminateReply)
from .run import RUNNING, TERMINATED, Orchestration

SHUTDOWN_REASON = "the daemon is shutting down"


class OrchestrationPlugin(BasePlugin):
    def __init__(self):
        super().__init__(
            PluginMetadata(name="orchestration", version="0.1.0", priority=70,
                           description="Multi-agent orchestration: debates, collaborations, "
                                       "teaching, brainstorms, analyses",
                           dependencies=["agent"]),
            PluginCapabilities(event_namespaces=["orchestration"]))
        self.orchestrations: OrderedDict[str, Orchestration] = OrderedDict()
        self.accepting = True
        self._starting = 0

    # ---- lifecycle ---------------------------------------------------------------------------

    @hookimpl
    def ksi_startup(self, config, context):
        self.settings = Settings.model_validate(context.config or {})
        self.context = context
        self._modes = [mode.describe() for mode in MODES.values()]

    @hookimpl
    async def ksi_stopping(self, context):
        # Before the agent plugin stops (it is a dependency, so it stops after us): the
        # orchestrations' agents are terminated, not left to be restored without their run.
        self.accepting = False
        running = [o for o in self.orchestrations.values() if o.status == RUNNING]
        await asyncio.gather(*(o.end(TERMINATED, SHUTDOWN_REASON) for o in running),
                             return_exceptions=True)

    # ---- events ------------------------------------------------------------------------------

    @event_handler("orchestration:modes", returns=ModesReply)
    def modes(self, data: ModesRequest):
        """The orchestration modes: roles (each with its agent profile), defaults, bounds."""
        return {"modes": self._modes, "count": len(self._modes)}

    @event_handler("orchestration:start", returns=StartReply)
    async def start(self, data: StartRequest, ctx):
        """Spawn agents for the mode's roles and start their conversation about the topic.

        Replies once the agents exist; each turn is then pushed as orchestration:turn and the
        end as orchestration:finished, to this connection and to subscribers.
        """
        if not self.accepting:
            raise KSIError(UNAVAILABLE, SHUTDOWN_REASON)
        self._forget_old()
        running = self._starting + sum(o.status == RUNNING
                                       for o in self.orchestrations.values())
        if running >= self.settings.max_running:
            raise KSIError(RATE_LIMITED, f"{running} orchestrations are running already "
                                         "(plugins.orchestration.max_running)")
        mode = MODES[data.mode]
        agents = data.agents or mode.default_agents
        rounds = data.rounds or mode.default_rounds
        orchestration_id = f"orch-{os.urandom(4).hex()}"

        async def ask(event: str, payload: dict):
            # Plugin-routed (no connection): the run outlives the client that started it, but
            # carries its correlation id, so its events can be traced back to the start.
            return await self.context.emit(event, payload, correlation_id=ctx.correlation_id)

        self._starting += 1  # counted while its agents are spawned, so that N starts at once
        try:                 # cannot all pass the max_running check
            participants = await spawn_cast(ask, orchestration_id, mode, data.topic, agents,
                                            rounds, data.model, data.tools, data.nodes)
        finally:
            self._starting -= 1
        if not self.accepting:  # the daemon began to stop while the agents were spawned
            await terminate_agents(ask, participants)
            raise KSIError(UNAVAILABLE, SHUTDOWN_REASON)
        run = Orchestration(orchestration_id, mode, data.topic, rounds, data.model,
                            participants, ask, ctx.push, self.settings.turn_timeout_s)
        self.orchestrations[orchestration_id] = run
        run.start()  # its first push can only follow this reply: it waits on an agent first
        return {"orchestration_id": orchestration_id, "status": RUNNING, "mode": mode.name,
                "topic": data.topic, "rounds": rounds,
                "agents": [p.shown() for p in participants], "tools": data.tools or []}

    @event_handler("orchestration:status", returns=StatusReply)
    def status(self, data: StatusRequest):
        """One orchestration with its transcript so far, or a summary of every one remembered.

        Running ones are always listed; ended ones for plugins.orchestration.finished_kept_s.
        """
        self._forget_old()
        if data.orchestration_id is not None:
            return self._find(data.orchestration_id).detail()
        summaries = [o.summary() for o in self.orchestrations.values()]
        return {"orchestrations": summaries, "count": len(summaries)}

    @event_handler("orchestration:terminate", returns=TerminateReply)
    async def terminate(self, data: OrchestrationRequest):
        """Stop an orchestration and terminate its agents; no turn follows its end.

        One that has already ended answers its final status.
        """
        run = self._find(data.orchestration_id)
        await run.end(TERMINATED, "terminated by request")
        return {"orchestration_id": run.orchestration_id, "status": run.status}

    # ---- bookkeeping -------------------------------------------------------------------------

    def _find(self, orchestration_id: str) -> Orchestration:
        run = self.orchestrations.get(orchestration_id)
        if run is None:
            raise KSIError(NOT_FOUND, f"no orchestration {orchestration_id!r} (finished ones "
                                      "are forgotten after a while)")
        return run

    def _forget_old(self) -> None:
        """Drop ended orchestrations past the age limit, then the oldest past the count limit."""
        cutoff = time.time() - self.settings.finished_kept_s
        ended = [o for o in self.orchestrations.values() if o.status != RUNNING]
        ended.sort(key=lambda o: o.finished_at)
        excess = len(ended) - self.settings.finished_kept
        for index, run in enumerate(ended):
            if index < excess or run.finished_at < cutoff:
                del self.orchestrations[run.orchestration_id]


ksi_plugin = OrchestrationPlugin
