"""The `completion` events: queue, run and stream model calls, with sessions and retries.

A request becomes a Job in the SessionScheduler; when its turn comes, `_run` asks the model
through litellm (imported in the background at start), retrying transient failures, and ends the
job with exactly one of completion:result, completion:error or completion:cancelled, pushed to
the requesting connection (with its correlation id) and to subscribers.

Every accepted request is journaled before it is answered, and its outcome before it is pushed
(journal.py): at start, what has no outcome runs again (`resumed`), and a request_id seen before
is answered from its job instead of run twice. At shutdown, what cannot finish in time is
checkpointed: it stays in the journal and resumes at the next start. A journaled completion of
an agent that now runs elsewhere (cluster mode: its lease moved while this node was down) is
ended as `moved` instead: it is the agent's turn, which its new home takes again.
"""
from __future__ import annotations

import asyncio
import time
import uuid
from collections import OrderedDict
from pathlib import Path

from ...event_system import event_handler
from ...plugin_base import BasePlugin, hookimpl
from ...plugin_types import PluginCapabilities, PluginMetadata
from ...protocol import CONFLICT, NOT_FOUND, TIMEOUT, UNAVAILABLE, UNKNOWN_EVENT, KSIError
from ...storage.sqlite_writer import WriterStopped
from . import claude_cli, hookspecs, offline_model
from .calls import call_model
from .hooks import CompletionHooks
from .journal import Entry, Journal
from .litellm_loader import LiteLLMLoader
from .memory import ConversationMemory
from .models import (AsyncReply, CancelRequest, CompletionRequest, CompletionResult,
                     ModelsRequest, PostResponseContext, PreCallContext, StatusRequest)
from .queue import Job, SessionScheduler
from .tool_loop import ToolLoop
from .response_log import ResponseLog
from .retries import RetryPolicy, error_code_of, is_transient, reason_of

ALIAS_DEPTH = 5
MOVED = "moved"  # the journal's state of an agent's completion left to the agent's new home
STOP_GRACE_S = 1.0  # how long a cancelled call may take to stop before it is left behind
PRUNE_EVERY_S = 60.0


class CompletionPlugin(BasePlugin):
    def __init__(self):
        super().__init__(
            PluginMetadata(name="completion", version="0.1.0", priority=50,
                           description="Model completions: sessions, streaming, retries",
                           hookspecs=[hookspecs]),
            PluginCapabilities(event_namespaces=["completion"],
                               provides_services=["completion"]))
        self.jobs: OrderedDict[str, Job] = OrderedDict()
        self.loader: LiteLLMLoader | None = None
        self.journal: Journal | None = None
        self.stopping = False

    # ---- lifecycle ---------------------------------------------------------------------------

    @hookimpl
    async def ksi_startup(self, config, context):
        own = context.config
        self.log = context.log
        self.default_model = own.get("default_model") or offline_model.DEFAULT_MODEL
        self.aliases = dict(own.get("aliases") or {})
        self.default_timeout_s = float(own.get("timeout_s", 300))
        self.shutdown_timeout_s = float(config["daemon"].get("shutdown_timeout", 10.0))
        retry = own.get("retry") or {}
        self.retry = RetryPolicy(int(retry.get("max_attempts", 4)),
                                 float(retry.get("base_delay_s", 0.5)),
                                 float(retry.get("max_delay_s", 30.0)))
        self.memory = ConversationMemory(self._emit_for_memory, self.log,
                                         int(own.get("history_window", 40)))
        self.responses = ResponseLog(Path(config["daemon"]["var_dir"]) / "logs" / "responses")
        self.hooks = CompletionHooks(context)
        self.scheduler = SessionScheduler(
            self._run, int(own.get("max_concurrent", 16)),
            {k: int(v) for k, v in (own.get("per_model_concurrency") or {}).items()},
            own.get("default_model_concurrency"))
        cli = own.get("claude_cli") or {}
        self.claude = claude_cli.ClaudeRunner(
            binary=cli.get("binary") or "claude",
            hard_timeout_s=float(cli.get("timeout_s", 600)),
            extra_args=cli.get("extra_args"),
            sessions=claude_cli.ClaudeSessions(context.data_dir / "claude_sessions.json"))
        self.loader = LiteLLMLoader(self._providers, self.log)
        self.warm_up = bool(own.get("warm_up", True))
        self.counts = {"completed": 0, "failed": 0, "cancelled": 0, "resumed": 0,
                       MOVED: 0}
        self._resolved: dict[str, tuple[str, dict]] = {}
        journal = own.get("journal") or {}
        self.keep_finished = int(journal.get("keep_finished", 2000))
        self.keep_finished_s = float(journal.get("keep_finished_s", 86400))
        self.journal = Journal(context.data_dir / "journal.db",
                               str(journal.get("synchronous", "NORMAL")),
                               deadline_s=config["daemon"]["event_timeout"],
                               report_degraded=context.report_degraded)
        await self.journal.prune(self.keep_finished, self.keep_finished_s)
        # Known before the socket opens, so a repeated request_id finds its job at once.
        self._to_resume, self._turns_to_store = [], []
        self._turns_left: dict[str, Job] = {}  # see _leave_moved_agents_turns
        self._storing_left: set[asyncio.Task] = set()
        for entry in self.journal.read_all():
            self._load(entry)

    @hookimpl
    def ksi_ready(self, context):
        if self.warm_up:  # off: litellm is imported by the first call that needs it
            self.loader.start()
        # Asked now, not at _load: the agent plugin starts after this one, and knows by now
        # which agents it runs.
        resumed = []
        for job in self._to_resume:
            if self.hooks.agent_elsewhere(job.payload.agent_id):
                self._end_moved(job)
                continue
            self._push(job, "completion:progress", self._progress(job, "queued"))
            self.scheduler.submit(job)
            resumed.append(job)
        self.counts["resumed"] = len(resumed)
        self.log.info("completions_resumed", count=len(resumed),
                      moved=len(self._to_resume) - len(resumed))
        self._to_resume = []
        self._leave_moved_agents_turns()
        turns, self._turns_to_store = self._turns_to_store, []  # handed over, not kept
        return [self._prune_now_and_then(), self._store_interrupted_turns(turns)]

    def _leave_moved_agents_turns(self) -> None:
        """A result committed just before a stop, of an agent that runs elsewhere now: the agent
        never recorded it, so its new home asks for that turn again (same request_id) and stores
        it; storing it here as well would put the turn in the conversation twice. Should the
        agent come back here instead and ask again, its turns are stored then (_job_for)."""
        for job in [job for job in self._turns_to_store
                    if self.hooks.agent_elsewhere(job.payload.agent_id)]:
            self._turns_to_store.remove(job)
            self._turns_left[job.request_id] = job
            self.log.info("turns_left_to_the_agents_home", request_id=job.request_id,
                          agent_id=job.payload.agent_id)

    @hookimpl
    def ksi_queue_depths(self):
        return {"queued": self.scheduler.queued_count(), "processing": len(self.scheduler.running)}

    @hookimpl
    async def ksi_stopping(self, context):
        # No new work. Queued work is checkpointed at once; running work may finish within the
        # shutdown deadline, and what is still running then is checkpointed too: it stays in
        # the journal and runs again at the next start.
        self.stopping = True
        for job in list(self.jobs.values()):
            if job.state == "queued" and self.scheduler.withdraw(job):
                self._checkpoint(job)
        running = [job.task for job in self.scheduler.running if job.task is not None]
        if running:
            await asyncio.wait(running, timeout=self._shutdown_time_left())
        await self._stop_running()

    @hookimpl
    async def ksi_shutdown(self, context):
        if not self.stopping:  # start-up failed or was interrupted: ksi_stopping did not run
            await self._stop_running()
        self.responses.close()
        if self.journal is not None:
            await self.journal.close()

    def _shutdown_time_left(self) -> float:
        deadline = self.context.shutdown_deadline
        if deadline is None:
            return self.shutdown_timeout_s
        return max(0.0, deadline - time.monotonic())

    async def _stop_running(self) -> None:
        running = {job: job.task for job in self.scheduler.running
                   if job.task is not None and not job.task.done()}
        for task in running.values():
            task.cancel()
        if running:
            await asyncio.wait(running.values(), timeout=STOP_GRACE_S)
        # A call that ignores cancellation is left behind (the daemon exits without it); its
        # requesters are told now, and the journal still holds it.
        for job, task in running.items():
            if not task.done():
                self.log.warning("completion_ignored_cancel", request_id=job.request_id)
                self._checkpoint(job)

    async def _prune_now_and_then(self) -> None:
        while True:
            await asyncio.sleep(PRUNE_EVERY_S)
            await self.journal.prune(self.keep_finished, self.keep_finished_s)

    def _providers(self) -> dict:
        return {offline_model.PROVIDER: offline_model.build_provider(),
                claude_cli.PROVIDER: claude_cli.build_provider(self.claude)}

    async def _emit_for_memory(self, event: str, data: dict):
        return await self.context.emit(event, data)

    # ---- events ------------------------------------------------------------------------------

    @event_handler("completion:async", returns=AsyncReply)
    def completion_async(self, data: CompletionRequest, ctx):
        """Queue a completion; its chunks and result arrive later as pushes."""
        job, repeated = self._job_for(data, ctx)
        if repeated:
            return self._accepted_reply(job, True)
        # A plain handler owing its reply: it is written at the journal's commit, which then
        # queues the job (the core holds the job's pushes until this reply is out).
        reply = ctx.reply_later()

        def answer(refusal: KSIError | None) -> None:
            if refusal is None:
                reply.set_result(self._accepted_reply(job, False))
            else:
                reply.set_exception(refusal)
        committed = self._journal_then_queue(job, ctx, answer)
        # The writer's deadline sweep fails the write's future without a commit: answer that.
        committed.add_done_callback(lambda done: done.cancelled() or done.exception() is None
                                    or reply.set_exception(done.exception()))
        return reply

    @staticmethod
    def _accepted_reply(job: Job, repeated: bool) -> dict:
        return {"request_id": job.request_id, "status": job.state,
                "session_id": job.session_id, "deduplicated": repeated, "resumed": job.resumed}

    @event_handler("completion:request", returns=CompletionResult, timeout=None, streams=True)
    def completion_request(self, data: CompletionRequest, ctx):
        """Ask a model and answer with its result once done (deadline: timeout_s)."""
        job, repeated = self._job_for(data, ctx)
        if job.finished:
            return self._answer_of(job.done.result(), repeated)
        # Owed, and settled by the job's end itself, right after its outcome's commit: a task
        # awaiting the outcome would reply one loop turn later, behind litellm's success
        # logging of the call (docs/COMPLETION.md, "Where a completion's time goes").
        reply = ctx.reply_later()

        def answer(outcome) -> None:
            try:
                reply.set_result(self._answer_of(outcome, repeated))
            except KSIError as exc:
                reply.set_exception(exc)
        job.waiters.append(answer)
        if not repeated:
            committed = self._journal_then_queue(job, ctx)
            # The writer's deadline sweep fails the write's future without a commit: answer
            # that (the request may still commit, and run, later).
            committed.add_done_callback(lambda done: done.cancelled() or done.exception() is None
                                        or reply.set_exception(done.exception()))
        return reply

    @staticmethod
    def _answer_of(outcome, repeated: bool) -> dict:
        """The reply to a completion:request from its job's outcome (a KSIError is raised)."""
        if isinstance(outcome, KSIError):
            if repeated:
                raise KSIError(outcome.code, outcome.message,
                               {**(outcome.details or {}), "deduplicated": True})
            raise outcome
        return {**outcome, "deduplicated": True} if repeated else outcome

    @event_handler("completion:cancel")
    def cancel(self, data: CancelRequest):
        """Cancel a queued or running completion; it ends with completion:cancelled."""
        job = self._known(data.request_id)
        if job is None:
            return {"request_id": data.request_id, "status": "not_found"}
        if job.finished or job.ending:
            return {"request_id": data.request_id, "status": "finished"}
        job.cancel_requested = True
        if self.scheduler.withdraw(job):
            self._end_cancelled(job)
        elif job.task is not None:
            job.task.cancel()
        return {"request_id": data.request_id, "status": "cancelled"}

    @event_handler("completion:status")
    def status(self, data: StatusRequest):
        """Queue and in-flight figures, or one request's state."""
        if data.request_id is not None:
            job = self._known(data.request_id)
            if job is None:
                raise KSIError(NOT_FOUND, f"no completion request {data.request_id}")
            return {"request_id": job.request_id, "status": job.state,
                    "session_id": job.session_id, "model": job.model,
                    "priority": job.priority, "attempts": job.attempts,
                    "resumed": job.resumed,
                    "queued_s": round((job.started_at or time.time()) - job.queued_at, 4)}
        return {"queued": self.scheduler.queued_count(),
                "processing": len(self.scheduler.running),
                "sessions_waiting": len(self.scheduler.waiting),
                "running_per_model": dict(self.scheduler.running_per_model),
                "max_concurrent": self.scheduler.max_concurrent,
                "litellm_ready": self.loader.is_ready, **self.counts}

    @event_handler("completion:models")
    async def models(self, data: ModelsRequest):
        """The default model, configured aliases, the built-in providers; `check` tests a name."""
        aliases = {name: (target if isinstance(target, str) else
                          {k: v for k, v in target.items() if k != "api_key"})
                   for name, target in self.aliases.items()}
        reply = {"default_model": self.default_model, "default_timeout_s": self.default_timeout_s,
                 "aliases": aliases,
                 "models": sorted({self.default_model, *self.aliases}),
                 "providers": [offline_model.PROVIDER, claude_cli.PROVIDER],
                 "note": "any litellm model name is accepted as well"}
        if data.check is not None:
            reply["check"] = await self._check_model(data.check)
        return {**reply, "litellm_ready": self.loader.is_ready}

    async def _check_model(self, name: str) -> dict:
        """Would a request naming `name` be accepted? The same resolution a request gets:
        an alias, a built-in provider, or a name litellm's own tables can route (no call)."""
        await self.loader.ready()
        try:
            routes_to, _extra = self._resolve(name)
        except KSIError as exc:
            return {"model": name, "usable": False, "reason": exc.message}
        return {"model": name, "usable": True, "routes_to": routes_to}

    # ---- submitting ----------------------------------------------------------------------------

    def _job_for(self, data: CompletionRequest, ctx) -> tuple[Job, bool]:
        """A new job for this request, or the known one with its request_id (True)."""
        if self.stopping:
            raise KSIError(UNAVAILABLE, "the daemon is shutting down")
        if data.request_id is not None:
            known = self._known(data.request_id)
            if known is not None and not self._back_here(known):
                self._store_left_turns_if_back(known)
                return known, True
        model_name = data.model or self.default_model
        if self.loader.is_ready:
            self._resolve(model_name)  # unknown models are refused in the reply itself
        job = self._new_job(data.request_id or uuid.uuid4().hex,
                            data.session_id or uuid.uuid4().hex, data.session_id is None,
                            model_name, data, time.time())
        job.connection, job.correlation_id = ctx.connection, ctx.correlation_id
        self._remember(job)  # before the commit: a repeat arriving meanwhile finds it
        return job, False

    def _journal_then_queue(self, job: Job, ctx, answer=None) -> asyncio.Future:
        """Journal the request; at the commit, `answer(None)` (or `answer(refusal)`), then queue
        the job. Raises the refusal at once when the journal is already closed."""
        data: CompletionRequest = job.payload
        entry = Entry(request_id=job.request_id, session_id=job.session_id,
                      new_session=job.new_session, model=job.model, agent_id=data.agent_id,
                      correlation_id=ctx.correlation_id, request=data.model_dump(mode="json"),
                      accepted_at=job.queued_at)
        try:
            return self.journal.accept(
                entry, on_commit=lambda _r, exc: self._accepted(job, exc, answer))
        except WriterStopped as exc:
            raise self._refuse(job, exc) from None

    def _accepted(self, job: Job, error: BaseException | None, answer=None) -> None:
        """The journal holds the request (or could not take it): answer, then queue or refuse."""
        if error is not None:
            refusal = self._refuse(job, error)
            if answer is not None:
                answer(refusal)
            return
        if answer is not None:
            answer(None)
        self._queue(job)

    def _queue(self, job: Job) -> None:
        if job.cancel_requested:  # cancelled between its acceptance and now
            self._end_cancelled(job)
        elif self.stopping:
            self._checkpoint(job)
        else:
            self._push(job, "completion:progress", self._progress(job, "queued"))
            self.scheduler.submit(job)

    def _refuse(self, job: Job, error: BaseException) -> KSIError:
        self.log.error("journal_write_failed", request_id=job.request_id, error=repr(error))
        self.jobs.pop(job.request_id, None)
        job.state = "refused"
        refusal = KSIError(UNAVAILABLE, "the request could not be recorded in the completion "
                                        f"journal: {error}")
        self._settle(job, refusal)
        return refusal

    def _new_job(self, request_id: str, session_id: str, new_session: bool, model: str,
                 data: CompletionRequest, queued_at: float) -> Job:
        job = Job(request_id, session_id, model, data.priority, data)
        job.attempts, job.cancel_requested, job.new_session = 0, False, new_session
        job.queued_at, job.started_at = queued_at, None
        job.timeout_s = data.timeout_s or self.default_timeout_s
        job.steps, job.chunks_sent = [], 0
        return job

    def _load(self, entry: Entry) -> None:
        """A journaled request back in memory: to resume, or to answer repeats of its id."""
        try:
            data = CompletionRequest.model_validate(entry.request)
        except ValueError as exc:  # written by another version; never run something unreadable
            self.log.error("journal_entry_unreadable", request_id=entry.request_id,
                           error=repr(exc))
            return
        job = self._new_job(entry.request_id, entry.session_id, entry.new_session, entry.model,
                            data, entry.accepted_at)
        job.correlation_id = entry.correlation_id
        job.steps = entry.steps
        self._remember(job)
        if entry.outcome is None:
            job.resumed = True
            self._to_resume.append(job)
            return
        job.state, job.ended_at, job.started_at = entry.state, entry.ended_at, entry.ended_at
        job.resumed = bool(entry.outcome.get("resumed"))
        if entry.state in ("failed", MOVED):
            outcome = KSIError(entry.outcome["code"], entry.outcome["message"],
                               entry.outcome.get("details"))
        else:
            outcome = entry.outcome
        job.done.set_result(outcome)
        if entry.state == "completed" and not entry.turns_stored:
            self._turns_to_store.append(job)

    def _known(self, request_id: str) -> Job | None:
        """The job with this id, unless it ended longer ago than finished jobs are kept."""
        job = self.jobs.get(request_id)
        if job is not None and job.ended_at is not None \
                and job.ended_at < time.time() - self.keep_finished_s:
            del self.jobs[request_id]
            return None
        return job

    def _store_left_turns_if_back(self, job: Job) -> None:
        """A result whose turns were left to its agent's new home, asked for again by that
        agent running here after all: this daemon stores them (what is missing only)."""
        if job.request_id in self._turns_left and \
                not self.hooks.agent_elsewhere(job.payload.agent_id):
            del self._turns_left[job.request_id]
            storing = asyncio.get_running_loop().create_task(self._store_interrupted_turns([job]))
            self._storing_left.add(storing)  # (held, so the task is not collected midway)
            storing.add_done_callback(self._storing_left.discard)

    def _back_here(self, job: Job) -> bool:
        """A completion ended as moved whose agent runs here again: its turn is this node's
        once more, and is asked anew (nobody saw an answer to it)."""
        return job.state == MOVED and not self.hooks.agent_elsewhere(job.payload.agent_id)

    def _remember(self, job: Job) -> None:
        self.jobs[job.request_id] = job
        self.jobs.move_to_end(job.request_id)
        while len(self.jobs) > self.keep_finished:
            oldest = next(iter(self.jobs.values()))
            if not oldest.finished:
                break
            self.jobs.popitem(last=False)

    def _resolve(self, name: str) -> tuple[str, dict]:
        """An alias or model name -> (litellm model, extra litellm arguments)."""
        known = self._resolved.get(name)
        if known is None:
            known = self._resolved[name] = self._resolve_now(name)
            if len(self._resolved) > 1024:  # names come from clients: keep the cache bounded
                self._resolved.pop(next(iter(self._resolved)))
        return known

    def _follow_aliases(self, name: str) -> tuple[str, dict]:
        """The model an alias names, with the extra arguments it sets (no litellm needed)."""
        extra: dict = {}
        for _ in range(ALIAS_DEPTH):
            target = self.aliases.get(name)
            if target is None:
                break
            if isinstance(target, dict):
                extra = {**{k: v for k, v in target.items() if k != "model"}, **extra}
                name = target.get("model", name)
            else:
                name = target
        return name, extra

    def _resolve_now(self, name: str) -> tuple[str, dict]:
        name, extra = self._follow_aliases(name)
        provider = name.split("/", 1)[0] if "/" in name else None
        if provider not in (offline_model.PROVIDER, claude_cli.PROVIDER):
            try:
                self.loader.module.get_llm_provider(name)
            except Exception:  # noqa: BLE001 - litellm says it cannot route this name
                aliases = ", ".join(sorted(self.aliases)) or "none are configured"
                raise KSIError(NOT_FOUND, f"unknown model {name!r}: it is neither a configured "
                               f"alias ({aliases}) nor a model name litellm can route (the "
                               f"default model is {self.default_model}); see completion:models"
                               ) from None
        return name, extra

    # ---- running -------------------------------------------------------------------------------

    async def _run(self, job: Job) -> None:
        job.started_at = time.time()
        self._push(job, "completion:progress", self._progress(job, "processing"))
        try:
            async with asyncio.timeout(job.timeout_s):
                result = await self._complete(job)
        except asyncio.CancelledError:
            if job.cancel_requested:
                self._end_cancelled(job)
                return
            self._checkpoint(job)  # only shutdown cancels otherwise: resume at the next start
            raise
        except TimeoutError:
            self._end_with_error(job, TIMEOUT, f"the completion did not finish within "
                                 f"{job.timeout_s:g} s")
        except KSIError as exc:
            self._end_with_error(job, exc.code, exc.message, exc.details)
        except Exception as exc:  # noqa: BLE001 - every failure ends as completion:error
            self._end_with_error(job, error_code_of(exc), _message_of(exc))
        else:
            self._end_with_result(job, result)

    async def _complete(self, job: Job) -> dict:
        request: CompletionRequest = job.payload
        started = time.perf_counter()
        if not self.loader.is_ready and not offline_model.runs(self._follow_aliases(job.model)[0]):
            await self.loader.ready()  # litellm's tables route the name
        model, extra = self._resolve(job.model)
        new_messages = _messages_of(request)
        history = [] if job.new_session else await self.memory.history(job.session_id)
        params = {k: v for k, v in (("temperature", request.temperature),
                                    ("max_tokens", request.max_tokens)) if v is not None}
        call = PreCallContext(job.request_id, job.session_id, model,
                              _in_model_order(history, new_messages), {**extra, **params},
                              request.agent_id)
        await self.hooks.pre_call(call)
        if request.tools and claude_cli.runs(call.model):
            # `claude` runs its own tool loop: it gets KSI's tools over MCP, as the agent.
            mcp = await self._claude_tools(request)
            answer = await self._call_with_retries(job, call, mcp=mcp)
            transcript, tool_calls = [], []
        elif request.tools:
            loop = await self._tool_loop(job, request)
            answer = await loop.run(call.messages, lambda messages, tools: self._call_with_retries(
                job, call, messages, tools))
            transcript, tool_calls = loop.transcript, loop.records
        else:
            answer = await self._call_with_retries(job, call)
            transcript, tool_calls = [], []
        seen = PostResponseContext(job.request_id, job.session_id, call.model, call.messages,
                                   answer.text, answer.usage, answer.cost_usd, job.attempts,
                                   request.agent_id)
        await self.hooks.post_response(seen)
        result = CompletionResult(
            request_id=job.request_id, session_id=job.session_id, model=call.model,
            text=answer.text, usage=answer.usage, cost_usd=answer.cost_usd,
            duration_ms=round((time.perf_counter() - started) * 1000, 3),
            attempts=job.attempts, annotations=seen.annotations, tool_calls=tool_calls,
            resumed=job.resumed).model_dump()
        # The client gets its answer once the journal holds it; the session stays busy until
        # the turns are stored, so its next turn still sees this one. Storing the turns only
        # after the outcome is committed keeps a resumed request from storing them twice.
        committed = self._end_with_result(job, result)
        if committed is None:
            return result
        try:
            await committed
        except Exception:  # noqa: BLE001 - logged where the commit failed; the answer is out
            pass
        try:
            await self._store_turns(job, new_messages + transcript, answer.text, call.model,
                                    answer.usage)
        except Exception as exc:  # noqa: BLE001 - the answer is out; report, keep serving
            self.log.error("conversation_store_failed", session_id=job.session_id,
                           error=repr(exc))
        return result

    async def _tool_loop(self, job: Job, request: CompletionRequest) -> ToolLoop:
        """The request's tools, resolved once (unknown names fail it with not_found), in a loop
        that takes up the steps a stop left in the journal."""
        not_running = KSIError(UNAVAILABLE, "this request names tools, but the tools plugin "
                                            "is not running")
        try:
            resolved = await self.context.emit("tools:resolve", {"names": request.tools,
                                                                 "agent_id": request.agent_id})
        except KSIError as exc:
            if exc.code in (UNKNOWN_EVENT, UNAVAILABLE):
                raise not_running from None
            raise
        if not isinstance(resolved, dict):  # nobody answered the event
            raise not_running
        if resolved.get("unknown"):
            raise KSIError(NOT_FOUND, f"unknown tools: {', '.join(resolved['unknown'])} "
                           "(see tools:list)", {"unknown": resolved["unknown"]})
        loop = ToolLoop(request_id=job.request_id, agent_id=request.agent_id,
                        tools=resolved["tools"], max_steps=request.max_tool_steps,
                        emit=self.context.emit, push=lambda event, data: self._push(job, event,
                                                                                    data),
                        journal=self.journal, cancelled_by_request=lambda: job.cancel_requested)
        loop.restore(job.steps)
        return loop

    async def _claude_tools(self, request: CompletionRequest) -> dict:
        """The MCP config a `claude` run gets for the request's tools (the mcp plugin's
        endpoint, with a token that offers those tools and acts as the request's agent)."""
        try:
            return await self.context.emit("mcp:agent_config", {"tools": request.tools,
                                                                "agent_id": request.agent_id})
        except KSIError as exc:
            if exc.code in (UNKNOWN_EVENT, UNAVAILABLE):
                raise KSIError(UNAVAILABLE, "this claude-cli request names tools, which claude "
                               f"gets over MCP, but the mcp plugin cannot serve them: "
                               f"{exc.message}") from None
            raise

    async def _store_turns(self, job: Job, new_messages: list[dict], text: str, model: str,
                           usage: dict, already: int = 0) -> None:
        """Store the turn's messages (tool steps included) and the answer, in one write;
        `already`: how many of them the store has (from a stop before turns were one write)."""
        turn = [{"role": m.get("role", "user"), "content": m.get("content"),
                 "tool_calls": m.get("tool_calls"), "tool_call_id": m.get("tool_call_id"),
                 "request_id": job.request_id}
                for m in new_messages if m.get("role") != "system"]
        turn.append({"role": "assistant", "content": text, "model": model, "usage": usage,
                     "request_id": job.request_id})
        if turn[already:]:
            await self.memory.append_turn(job.session_id, turn[already:])
        self.journal.turns_stored(job.request_id)

    async def _store_interrupted_turns(self, jobs: list[Job]) -> None:
        """Turns of results committed just before a stop, whose turns were not stored yet."""
        for job in jobs:
            outcome = job.done.result()
            try:
                stored = await self.memory.count_stored_for(job.session_id, job.request_id)
                steps = [message for message, _record in job.steps]
                await self._store_turns(job, _messages_of(job.payload) + steps, outcome["text"],
                                        outcome["model"], outcome["usage"], stored)
            except Exception as exc:  # noqa: BLE001 - one session's store must not stop others
                self.log.error("conversation_store_failed", session_id=job.session_id,
                               error=repr(exc))

    async def _call_with_retries(self, job: Job, call: PreCallContext,
                                 messages: list[dict] | None = None,
                                 tools: list[dict] | None = None, mcp: dict | None = None):
        """One model call (`messages`: this step's, default the call's), retried while fresh."""
        sent = 0

        def send_delta(delta: str) -> None:
            nonlocal sent
            # One index sequence per request: a tool loop's steps continue it.
            self._push(job, "completion:chunk",
                       {"request_id": job.request_id, "index": job.chunks_sent, "delta": delta})
            job.chunks_sent += 1
            sent += 1

        # (for the model called: a pre-call hook may have changed it)
        litellm = None if offline_model.runs(call.model) else await self.loader.ready()
        while True:
            job.attempts += 1
            try:
                return await call_model(
                    litellm, call.model, call.messages if messages is None else messages,
                    call.params, job.timeout_s, job.session_id,
                    send_delta if job.payload.stream else None, tools, mcp)
            except (asyncio.CancelledError, KSIError):
                raise
            except Exception as exc:  # noqa: BLE001 - decide below whether to try again
                # Once text went out, a retry would repeat it: only fresh attempts are retried.
                if sent or job.attempts >= self.retry.max_attempts or not is_transient(exc):
                    raise
                delay = self.retry.delay_before(job.attempts + 1, exc)
                self._push(job, "completion:retry", {
                    "request_id": job.request_id, "attempt": job.attempts + 1,
                    "delay_s": round(delay, 3), "reason": reason_of(exc)})
                await asyncio.sleep(delay)

    # ---- ending: exactly one of result, error, cancelled ------------------------------------

    def _end_with_result(self, job: Job, result: dict) -> asyncio.Future | None:
        if job.payload.agent_id:
            result["agent_id"] = job.payload.agent_id

        def deliver() -> None:
            try:  # before the reply: the file is complete when the client has the result
                self.responses.append(job.session_id, {**result, "timestamp": time.time()})
            except OSError as exc:
                self.log.error("response_log_failed", error=repr(exc))
            self.counts["completed"] += 1
            self._push(job, "completion:result", result)
        return self._end(job, "completed", result, result, deliver)

    def _end_with_error(self, job: Job, code: str, message: str,
                        details=None) -> asyncio.Future | None:
        error = {"code": code, "message": message}
        if details is not None:  # e.g. the partial transcript of a tool loop out of steps
            error["details"] = details

        def deliver() -> None:
            self.counts["failed"] += 1
            self._push(job, "completion:error", {
                "request_id": job.request_id, "session_id": job.session_id,
                "error": error, **self._resumed_mark(job)})
        return self._end(job, "failed", {**error, **self._resumed_mark(job)},
                         KSIError(code, message, details), deliver)

    def _end_cancelled(self, job: Job) -> asyncio.Future | None:
        outcome = {"request_id": job.request_id, "session_id": job.session_id,
                   "status": "cancelled", **self._resumed_mark(job)}

        def deliver() -> None:
            self.counts["cancelled"] += 1
            self._push(job, "completion:cancelled", {"request_id": job.request_id,
                                                     "session_id": job.session_id,
                                                     **self._resumed_mark(job)})
        return self._end(job, "cancelled", outcome, outcome, deliver)

    def _end(self, job: Job, state: str, recorded: dict, outcome, deliver) -> asyncio.Future | None:
        """Commit the outcome to the journal, then tell everyone; None if the job already ended.

        Write-ahead: once anyone has seen the outcome, the journal holds it, so a restart can
        never run the request again. Delivery follows the commit even if nobody awaits it.
        """
        if job.finished or job.ending or job.checkpointed:
            return None
        job.ending = True

        def after_commit(_result, error) -> None:
            if error is not None:  # the outcome is still delivered; a restart would rerun it
                self.log.error("journal_write_failed", request_id=job.request_id,
                               error=repr(error))
            job.state, job.ended_at = state, time.time()
            deliver()
            self._settle(job, outcome)
        try:
            return self.journal.finish(job.request_id, state, recorded, on_commit=after_commit)
        except WriterStopped as exc:
            after_commit(None, exc)
            return None

    def _end_moved(self, job: Job) -> asyncio.Future | None:
        """A journaled turn of an agent that runs on another node now: not run here, where
        nobody waits for it (the asking agent was this node's before its stop). Ended so that
        a repeat of its request_id says so; no turn of it is stored."""
        agent_id = job.payload.agent_id
        job.resumed = False
        message = (f"completion {job.request_id} was a turn of agent {agent_id}, which this "
                   "node no longer runs (its lease went when the node stopped): the node that "
                   "runs the agent now takes the turn again under this request_id (this node, "
                   "if the agent comes back here); agent:info shows the agent and its reply")
        details = {"request_id": job.request_id, "agent_id": agent_id, MOVED: True}
        error = {"code": CONFLICT, "message": message, "details": details}

        def deliver() -> None:
            self.counts[MOVED] += 1
            self._push(job, "completion:error", {"request_id": job.request_id,
                                                 "session_id": job.session_id, "error": error})
        return self._end(job, MOVED, error, KSIError(CONFLICT, message, details), deliver)

    def _checkpoint(self, job: Job) -> None:
        """Shutdown: leave the job in the journal for the next start and tell who is waiting."""
        if job.finished or job.ending or job.checkpointed:
            return
        job.checkpointed, job.state = True, "checkpointed"
        self._push(job, "completion:progress", self._progress(job, "checkpointed"))
        error = KSIError(UNAVAILABLE, "the daemon is shutting down; this request is kept and "
                         "runs at the next start: ask again with the same request_id for its "
                         "result", {"request_id": job.request_id, "checkpointed": True})
        waiters, job.waiters = job.waiters, []
        for waiter in waiters:
            waiter(error)

    @staticmethod
    def _settle(job: Job, outcome) -> None:
        job.done.set_result(outcome)
        waiters, job.waiters = job.waiters, []
        for waiter in waiters:
            waiter(outcome)

    def _progress(self, job: Job, status: str) -> dict:
        return {"request_id": job.request_id, "status": status, **self._resumed_mark(job)}

    @staticmethod
    def _resumed_mark(job: Job) -> dict:
        return {"resumed": True} if job.resumed else {}

    def _push(self, job: Job, event: str, data: dict) -> None:
        self.context.push(event, data, job.correlation_id, job.connection)


def _messages_of(request: CompletionRequest) -> list[dict]:
    """This turn's new messages, as the model and the conversation store receive them."""
    if request.prompt is not None:
        return [{"role": "user", "content": request.prompt}]
    return [m.model_dump(exclude_none=True) for m in request.messages]


def _in_model_order(history: list[dict], new_messages: list[dict]) -> list[dict]:
    """This turn's system messages first, then the session's history, then the rest of the turn.

    Agents send their system prompt with every turn; models expect it before the conversation,
    not between the last answer and the new question. It is never stored (see _store_turns),
    so it appears once.
    """
    system = [m for m in new_messages if m.get("role") == "system"]
    if not system:
        return history + new_messages
    return system + history + [m for m in new_messages if m.get("role") != "system"]


def _message_of(exc: BaseException) -> str:
    text = str(getattr(exc, "message", None) or exc) or type(exc).__name__
    return text if len(text) <= 2000 else text[:2000] + "…"
