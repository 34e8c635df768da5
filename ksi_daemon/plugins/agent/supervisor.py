"""The supervised agent: one asyncio task per agent, answering its inbox one message at a time.

A turn: the message at the head of the inbox becomes `completion:request` in the agent's session
(system prompt + the message; the session carries the history), with the request_id
`<agent_id>:<message_id>`. The reply and its consequences (the message it becomes in the sender
agent's inbox) are committed together, then the reply goes out: `agent:reply` to subscribers,
plus the sender agent's inbox, the topic the message came from, the waiting caller, or the
requesting connection. Only then does the message leave the inbox, so a turn cut short by a
crash or a stop is taken again, with the same request_id, when the agent runs again.

A crash is any exception escaping a turn: a completion that ends in an error (the model
unreachable or failing after completion's own retries, an unknown model, a timeout, a pre-call
hook refusing), or a bug here. The supervisor then restarts the agent after
restart_base_delay_s, doubling per crash in a row up to restart_max_delay_s, and after
max_restarts restarts in a row marks it failed with the reason. A daemon stop is not a crash:
the turn in progress ends (or is abandoned) and the message stays pending.
"""
from __future__ import annotations

import asyncio
import os
import time
from typing import Awaitable, Callable

import orjson
import structlog

from ...protocol import CONFLICT, UNAVAILABLE, KSIError
from . import store
from .agent import DIRECT, TOPIC, Agent, Message

log = structlog.get_logger("ksi.plugin.agent")
Emit = Callable[..., Awaitable]
Write = Callable[..., Awaitable]
STOP_TASK_S = 2.0  # a cancelled agent task ends at its next await; this only bounds a bug
INTERRUPTED_NOTE = "[interrupted: this turn was stopped before it was answered]"


class Stopping(Exception):
    """The daemon is stopping: leave the current message pending and end the task."""


class TurnFailed(Exception):
    """A turn's completion ended in an error: the agent crashed."""


class AgentRuntime:
    def __init__(self, settings, emit: Emit, write: Write, agents: dict[str, Agent]):
        self.settings, self._emit, self._write, self.agents = settings, emit, write, agents
        self.stopping = False
        self.tasks: set[asyncio.Task] = set()
        self._seq = 0
        # Told when an agent gives its last turn (max_turns), so what it owns can end with it.
        self.after_last_turn: Callable[[str], Awaitable[None]] | None = None

    # ---- ids and messages ----------------------------------------------------------------------

    def next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def continue_seq_after(self, seq: int) -> None:
        self._seq = max(self._seq, seq)

    def new_message(self, text: str, reply_to: str, sender: str | None = None,
                    topic: str | None = None, message_id: str | None = None) -> Message:
        return Message(message_id or f"m-{os.urandom(6).hex()}", self.next_seq(), text,
                       reply_to, sender, topic)

    # ---- tasks ---------------------------------------------------------------------------------

    def start(self, agent: Agent) -> None:
        task = asyncio.get_running_loop().create_task(self.supervise(agent),
                                                      name=f"agent-{agent.agent_id}")
        agent.task = task
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def stop_task(self, agent: Agent) -> Message | None:
        """End the agent's task, and cancel the completion it was waiting for, which would
        otherwise still run at the model. Returns the message of that completion if it was
        cancelled; if it had finished, its request_id still answers with the outcome."""
        task, agent.task = agent.task, None
        waiting_on, agent.current = agent.current, None
        if task is not None and not task.done():
            task.cancel()
            await asyncio.wait([task], timeout=STOP_TASK_S)
        if waiting_on is None:
            return None
        try:
            cancel = await self._emit("completion:cancel",
                                      {"request_id": waiting_on.request_id(agent.agent_id)})
        except KSIError as exc:
            log.warning("agent_completion_not_cancelled", agent_id=agent.agent_id,
                        error=exc.message)
            return None
        return waiting_on if cancel.get("status") == "cancelled" else None

    async def interrupt(self, agent: Agent, forget: bool = False) -> dict:
        """Stop the agent's running turn at once and take the next message. The turn is recorded
        as interrupted (in agents.db and, unless `forget`, in the conversation); its waiters are
        told. Not a crash: the agent's task is replaced, as by agent:restart, and no restart is
        counted."""
        if agent.current is None:
            return {"interrupted": False,
                    "reason": "idle" if agent.status == "running" else agent.status}
        stopped = await self.stop_task(agent)
        try:
            if stopped is not None:
                await self._record_interrupted(agent, stopped, forget)
        finally:  # even if the record failed, the agent goes on with its inbox
            if self.agents.get(agent.agent_id) is agent and agent.task is None and \
                    agent.status == "running":
                self.start(agent)
        if stopped is None:  # it finished first: the new task records its answer as usual
            return {"interrupted": False, "reason": "finished"}
        return {"interrupted": True, "message_id": stopped.message_id,
                "request_id": stopped.request_id(agent.agent_id)}

    async def _record_interrupted(self, agent: Agent, message: Message, forget: bool) -> None:
        request_id = message.request_id(agent.agent_id)
        state = store.ROLLED_BACK if forget else store.INTERRUPTED
        await self._write(store.record_turn, agent.agent_id, message.message_id, state, None,
                          request_id, None, agent.turns, agent.messages_handled + 1, None,
                          self.settings.recent_kept)
        agent.messages_handled += 1
        if message in agent.inbox:
            agent.inbox.remove(message)
        agent.recent.append(turn_record(message, state, None, request_id, None))
        message.settle(KSIError(CONFLICT, f"agent {agent.agent_id}'s turn was interrupted "
                                          "before it answered" + (" and rolled back" if forget
                                                                   else "")))
        if not forget:
            # The completion stores a turn only once answered: say in the session what was
            # asked and that it went unanswered, so the next turn knows.
            for role, content in (("user", message.text), ("assistant", INTERRUPTED_NOTE)):
                await self._announce("conversation:append", {
                    "session_id": agent.session_id, "role": role, "content": content,
                    "request_id": request_id, "metadata": {"interrupted": True}})
        await self._announce("agent:interrupted", {
            "agent_id": agent.agent_id, "message_id": message.message_id,
            "request_id": request_id, "rolled_back": forget}, message.correlation_id)

    def wake_all(self) -> None:
        for agent in self.agents.values():
            agent.wakeup.set()

    # ---- supervision ---------------------------------------------------------------------------

    async def supervise(self, agent: Agent) -> None:
        while True:
            try:
                await self._serve(agent)
                return
            except Stopping:
                agent.fail_waiters(KSIError(UNAVAILABLE, "the daemon is shutting down; the "
                                                         "message is kept and answered after "
                                                         "the restart"))
                return
            except asyncio.CancelledError:
                return
            except Exception as exc:  # noqa: BLE001 - every crash is handled the same way
                if self.stopping or self.agents.get(agent.agent_id) is not agent:
                    return  # stopping, or (cluster mode) the agent now runs on another node
                if not await self._recover_from(agent, exc):
                    return

    async def _recover_from(self, agent: Agent, exc: Exception) -> bool:
        """Back off and say True to run again, or mark the agent failed and say False."""
        reason = describe(exc)
        failed_message = agent.current
        agent.current = None
        agent.failures += 1
        attempts = None
        if failed_message is not None:
            failed_message.attempts += 1  # the retry is a new completion: a new request_id
            attempts = (failed_message.message_id, failed_message.attempts)
        if agent.failures > self.settings.max_restarts:
            agent.status, agent.error = "failed", reason
            log.warning("agent_failed", agent_id=agent.agent_id, reason=reason,
                        crashes=agent.failures)
            await self._save_status(agent, attempts)
            agent.fail_waiters(KSIError(CONFLICT, f"agent {agent.agent_id} failed: {reason}"))
            await self._announce("agent:status", {"agent_id": agent.agent_id, "status": "failed",
                                                  "reason": reason, "attempt": agent.failures})
            return False
        delay = min(self.settings.restart_base_delay_s * 2 ** (agent.failures - 1),
                    self.settings.restart_max_delay_s)
        agent.status, agent.error = "restarting", reason
        agent.restarts += 1
        log.warning("agent_crashed", agent_id=agent.agent_id, reason=reason,
                    attempt=agent.failures, delay_s=delay)
        await self._save_status(agent, attempts)
        await self._announce("agent:status", {
            "agent_id": agent.agent_id, "status": "restarting", "reason": reason,
            "attempt": agent.failures, "delay_s": delay})
        await asyncio.sleep(delay)
        agent.status = "running"
        await self._save_status(agent)
        await self._announce("agent:status", {"agent_id": agent.agent_id, "status": "running",
                                              "attempt": agent.failures})
        return True

    async def _save_status(self, agent: Agent, attempts=None) -> None:
        try:
            await self._write(store.save_status, agent.agent_id, agent.status, agent.restarts,
                              agent.error, attempts)
        except Exception as exc:  # noqa: BLE001 - memory stays right; the log says what is lost
            log.error("agent_status_not_saved", agent_id=agent.agent_id, error=repr(exc))

    # ---- serving the inbox ---------------------------------------------------------------------

    async def _serve(self, agent: Agent) -> None:
        while not self.stopping:
            if not agent.inbox:
                agent.wakeup.clear()
                await agent.wakeup.wait()
                continue
            await self._handle(agent, agent.inbox[0])

    async def _handle(self, agent: Agent, message: Message) -> None:
        if agent.turns >= agent.profile.max_turns or message.sender == agent.agent_id:
            await self._skip(agent, message, "max_turns" if message.sender != agent.agent_id
                             else "own message")
            return
        agent.current = message
        request_id = message.request_id(agent.agent_id)
        result = await self._complete(agent, message, request_id)
        agent.current = None
        if result.get("status") == "cancelled":
            await self._skip(agent, message, "completion cancelled")
            return
        await self._finish_turn(agent, message, str(result.get("text") or ""), request_id)

    async def _complete(self, agent: Agent, message: Message, request_id: str) -> dict:
        profile = agent.profile
        request = {"messages": [{"role": "system", "content": profile.system_prompt},
                                {"role": "user", "content": message.text}]
                   if profile.system_prompt else [{"role": "user", "content": message.text}],
                   "session_id": agent.session_id, "agent_id": agent.agent_id,
                   "request_id": request_id}
        for key, value in (("model", profile.model), ("temperature", profile.temperature),
                           ("timeout_s", self.settings.completion_timeout_s),
                           ("tools", profile.offered_tools() or None),
                           ("max_tool_steps", profile.max_tool_steps)):
            if value is not None:
                request[key] = value
        try:
            return await self._emit("completion:request", request, message.correlation_id)
        except KSIError as exc:
            if self.stopping and exc.code == UNAVAILABLE:
                raise Stopping() from None
            raise TurnFailed(f"completion {request_id} failed: {exc.code}: {exc.message}") \
                from None

    async def _finish_turn(self, agent: Agent, message: Message, text: str,
                           request_id: str) -> None:
        turn = agent.turns + 1
        target = self.agents.get(message.sender) if message.reply_to == DIRECT and \
            message.sender else None
        forward = None
        if target is not None:
            forward = self.new_message(text, DIRECT, sender=agent.agent_id)
            forward.correlation_id = message.correlation_id
        state = store.ANSWERED if message.reply_to == TOPIC else store.DONE
        await self._write(store.record_turn, agent.agent_id, message.message_id, state, text,
                          request_id, turn, turn, agent.messages_handled + 1,
                          forward.row(target.agent_id, time.time()) if forward else None,
                          self.settings.recent_kept)
        agent.turns, agent.failures = turn, 0
        agent.messages_handled += 1
        agent.inbox.popleft()
        agent.recent.append(turn_record(message, state, text, request_id, turn))
        reply = {"agent_id": agent.agent_id, "session_id": agent.session_id,
                 "in_reply_to": message.message_id, "sender": message.sender, "text": text,
                 "request_id": request_id, "turn": turn}
        if message.topic is not None:
            reply["topic"] = message.topic
        await self._send_reply(agent, message, reply, target, forward)
        if turn == agent.profile.max_turns:
            await self._announce("agent:status", {
                "agent_id": agent.agent_id, "status": agent.status,
                "reason": f"max_turns reached ({turn}): later messages are not answered"})
            if self.after_last_turn is not None:
                await self.after_last_turn(agent.agent_id)

    async def _send_reply(self, agent: Agent, message: Message, reply: dict,
                          target: Agent | None, forward: Message | None) -> None:
        if message.ctx is not None and message.reply_to == DIRECT and target is None:
            message.ctx.push("agent:reply", reply)  # the sending client, and subscribers
        else:
            await self._announce("agent:reply", reply, message.correlation_id)
        message.settle({"text": reply["text"], "request_id": reply["request_id"],
                        "session_id": agent.session_id, "turn": reply["turn"]})
        if forward is not None and self.agents.get(target.agent_id) is target:
            target.deliver(forward)
        if message.reply_to == TOPIC:
            await self.publish_reply(agent.agent_id, message.message_id, message.topic,
                                     reply["text"], message.correlation_id)

    async def publish_reply(self, agent_id: str, message_id: str, topic: str, text: str,
                            correlation_id: str | None = None) -> None:
        """Publish a reply to its topic, then mark it done (the other agents there answer it)."""
        try:
            await self._emit("message:publish", {"topic": topic, "content": text,
                                                 "sender": agent_id}, correlation_id)
        except KSIError as exc:
            log.error("agent_reply_not_published", agent_id=agent_id, topic=topic,
                      error=exc.message)
            return
        try:
            await self._write(store.mark_done, agent_id, message_id)
        except Exception as exc:  # noqa: BLE001 - at worst it is published again after a crash
            log.warning("agent_reply_not_marked", agent_id=agent_id, error=repr(exc))
            return
        agent = self.agents.get(agent_id)
        for turn in agent.recent if agent is not None else ():
            if turn["message_id"] == message_id:
                turn["state"] = store.DONE

    async def _skip(self, agent: Agent, message: Message, why: str) -> None:
        await self._write(store.record_turn, agent.agent_id, message.message_id, store.SKIPPED,
                          None, None, None, agent.turns, agent.messages_handled + 1, None,
                          self.settings.recent_kept)
        agent.messages_handled += 1
        agent.inbox.popleft()
        agent.recent.append(turn_record(message, store.SKIPPED, None, None, None))
        message.settle(KSIError(CONFLICT, f"agent {agent.agent_id} did not answer: {why}"
                                + (f" ({agent.turns} of {agent.profile.max_turns})"
                                   if why == "max_turns" else "")))
        log.info("agent_message_skipped", agent_id=agent.agent_id,
                 message_id=message.message_id, why=why)

    async def _announce(self, event: str, data: dict, correlation_id: str | None = None) -> None:
        try:
            await self._emit(event, data, correlation_id)
        except KSIError as exc:  # someone answers our announcement with an error: not ours
            log.warning("agent_event_refused", event_name=event, error=exc.message)


def turn_record(message: Message, state: str, reply: str | None, request_id: str | None,
                turn: int | None) -> dict:
    return {"message_id": message.message_id, "sender": message.sender, "topic": message.topic,
            "content": message.text, "reply": reply, "turn": turn, "request_id": request_id,
            "state": state}


def text_of(content) -> str:
    """What the model is told for a topic message: text as is, anything else as JSON."""
    if isinstance(content, str):
        return content
    return orjson.dumps(content).decode()


def describe(exc: BaseException) -> str:
    if isinstance(exc, TurnFailed):
        return str(exc)[:2000]
    if isinstance(exc, KSIError):
        return f"{exc.code}: {exc.message}"[:2000]
    return f"{type(exc).__name__}: {exc}"[:2000]
