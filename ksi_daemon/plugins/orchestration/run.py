"""One running orchestration: the turn-taking loop, and the one way it ends.

Round by round, each agent in speaking order is sent the previous speaker's text with
`agent:send {wait: true}` (the first speaker of the first round gets the topic and its role's
instruction) and its reply becomes the next turn, pushed as `orchestration:turn`. Every way of
ending (all rounds played, an agent failing, terminate, daemon shutdown) goes through `end()`,
which flips the status first, so no turn can be announced after `orchestration:finished`, and
announces the end exactly once, after the agents are gone.
"""
from __future__ import annotations

import asyncio
import time
from typing import Any, Callable

import structlog

from ...protocol import KSIError
from .cast import Ask, terminate_agents
from .modes import Mode, opening_message
from .models import Participant

RUNNING, FINISHED, TERMINATED, FAILED = "running", "finished", "terminated", "failed"
STOP_GRACE_S = 5.0
log = structlog.get_logger("ksi.plugin.orchestration")


class AgentFailed(Exception):
    """An agent did not answer its turn: the run ends as failed with this reason."""


class Orchestration:
    def __init__(self, orchestration_id: str, mode: Mode, topic: str, rounds: int,
                 model: str | None, participants: list[Participant], ask: Ask,
                 announce: Callable[[str, Any], None], turn_timeout_s: float):
        self.orchestration_id, self.mode, self.topic = orchestration_id, mode, topic
        self.rounds, self.model, self.participants = rounds, model, participants
        self._ask, self._announce, self._turn_timeout_s = ask, announce, turn_timeout_s
        self.status, self.reason = RUNNING, None
        self.round = 0
        self.transcript: list[dict] = []
        self.started_at, self.finished_at = time.time(), None
        self.task: asyncio.Task | None = None
        self._ended = asyncio.Event()

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(
            self._play(), name=f"orchestration {self.orchestration_id}")

    # ---- the conversation ----------------------------------------------------------------------

    async def _play(self) -> None:
        try:
            heard = opening_message(self.mode.roles[0], self.topic)
            sender = f"orchestration:{self.orchestration_id}"
            for self.round in range(1, self.rounds + 1):
                for speaker in self.participants:
                    heard = await self._take_turn(speaker, heard, sender)
                    if heard is None:
                        return  # ended from outside (terminate, shutdown) while it spoke
                    sender = speaker.agent_id
            await self.end(FINISHED)
        except AgentFailed as exc:
            await self.end(FAILED, str(exc))
        except Exception as exc:  # noqa: BLE001 - a bug here must still end the run cleanly
            log.error("orchestration_crashed", orchestration_id=self.orchestration_id,
                      error=repr(exc), exc_info=exc)
            await self.end(FAILED, f"{type(exc).__name__}: {exc}")

    async def _take_turn(self, speaker: Participant, heard: str, sender: str) -> str | None:
        who = f"agent {speaker.agent_id} ({speaker.role})"
        try:
            sent = await self._ask("agent:send", {
                "agent_id": speaker.agent_id, "content": heard, "sender": sender,
                "wait": True, "timeout_s": self._turn_timeout_s})
        except KSIError as exc:
            if self.status != RUNNING:
                return None
            raise AgentFailed(f"{who} failed: {exc.code}: {exc.message}") from None
        if self.status != RUNNING:
            return None
        reply = (sent or {}).get("reply") or {}
        text = reply.get("text")
        if not isinstance(text, str) or not text.strip():
            raise AgentFailed(f"{who} gave no reply")
        turn = {"orchestration_id": self.orchestration_id, "round": self.round,
                "turn": len(self.transcript) + 1, "speaker": speaker.agent_id,
                "role": speaker.role, "text": text,
                "session_id": reply.get("session_id") or speaker.session_id}
        self.transcript.append(turn)
        self._announce("orchestration:turn", turn)
        return text

    # ---- ending ----------------------------------------------------------------------------------

    async def end(self, status: str, reason: str | None = None) -> bool:
        """End the run as `status`; False (and nothing happens) if it has already ended."""
        if self.status != RUNNING:
            if asyncio.current_task() is not self.task:  # the ending waits for the loop
                await self._ended.wait()
            return False
        self.status, self.reason, self.finished_at = status, reason, time.time()
        try:
            # Terminating the agents also fails an agent:send in flight, which stops the loop;
            # cancelling it instead would cut into the agent plugin's handler mid-turn.
            await terminate_agents(self._ask, self.participants)
            await self._stop_the_loop()
        finally:
            self._announce("orchestration:finished", {
                "orchestration_id": self.orchestration_id, "status": status,
                "turns": len(self.transcript), "session_ids": self.session_ids(),
                "reason": reason, "duration_s": self.duration_s()})
            self._ended.set()
            log.info("orchestration_ended", orchestration_id=self.orchestration_id,
                     status=status, reason=reason, turns=len(self.transcript))
        return True

    async def _stop_the_loop(self) -> None:
        if self.task is None or self.task is asyncio.current_task() or self.task.done():
            return
        done, _ = await asyncio.wait([self.task], timeout=STOP_GRACE_S)
        if not done:
            self.task.cancel()
            await asyncio.wait([self.task], timeout=STOP_GRACE_S)

    # ---- what status shows -------------------------------------------------------------------

    def session_ids(self) -> list[str]:
        ids = [p.session_id for p in self.participants if p.session_id]
        ids += [t["session_id"] for t in self.transcript if t["session_id"]]
        return list(dict.fromkeys(ids))

    def duration_s(self) -> float:
        return round((self.finished_at or time.time()) - self.started_at, 3)

    def summary(self) -> dict:
        return {"orchestration_id": self.orchestration_id, "mode": self.mode.name,
                "topic": self.topic, "status": self.status, "reason": self.reason,
                "rounds": self.rounds, "round": self.round, "turns": len(self.transcript),
                "agents": [p.shown() for p in self.participants],
                "session_ids": self.session_ids(), "model": self.model,
                "started_at": self.started_at, "finished_at": self.finished_at,
                "duration_s": self.duration_s()}

    def detail(self) -> dict:
        return {**self.summary(), "transcript": list(self.transcript)}
