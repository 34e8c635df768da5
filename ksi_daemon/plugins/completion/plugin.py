"""The `completion` events: queue, run and stream model calls, with sessions and retries.

A request becomes a Job in the SessionScheduler; when its turn comes, `_run` asks the model
through litellm (imported in the background at start), retrying transient failures, and ends the
job with exactly one of completion:result, completion:error or completion:cancelled, pushed to
the requesting connection (with its correlation id) and to subscribers.
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
from ...protocol import CONFLICT, NOT_FOUND, TIMEOUT, UNAVAILABLE, KSIError
from . import claude_cli, offline_model
from .calls import call_model
from .hooks import CompletionHooks
from .litellm_loader import LiteLLMLoader
from .memory import ConversationMemory, ResponseLog
from .models import (AsyncReply, CancelRequest, CompletionRequest, CompletionResult,
                     ModelsRequest, PostResponseContext, PreCallContext, StatusRequest)
from .queue import Job, SessionScheduler
from .retries import RetryPolicy, error_code_of, is_transient, reason_of

FINISHED_KEPT = 2000  # finished requests completion:status can still describe
ALIAS_DEPTH = 5


class CompletionPlugin(BasePlugin):
    def __init__(self):
        super().__init__(
            PluginMetadata(name="completion", version="0.1.0", priority=50,
                           description="Model completions: sessions, streaming, retries"),
            PluginCapabilities(event_namespaces=["completion"],
                               provides_services=["completion"]))
        self.jobs: OrderedDict[str, Job] = OrderedDict()
        self.loader: LiteLLMLoader | None = None

    # ---- lifecycle ---------------------------------------------------------------------------

    @hookimpl
    def ksi_startup(self, config, context):
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
        self.hooks = CompletionHooks(context.manager, self.log)
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
        self.counts = {"completed": 0, "failed": 0, "cancelled": 0}
        self._resolved: dict[str, tuple[str, dict]] = {}

    @hookimpl
    def ksi_ready(self, context):
        self.loader.start()

    @hookimpl
    async def ksi_stopping(self, context):
        # Queued work will not start; running work may finish within the shutdown deadline, and
        # what is left then ends with completion:error `unavailable` while connections are open.
        for job in list(self.jobs.values()):
            if job.state == "queued" and self.scheduler.withdraw(job):
                self._end_with_error(job, UNAVAILABLE, "the daemon is shutting down")
        running = [job.task for job in self.scheduler.running if job.task is not None]
        if running:
            await asyncio.wait(running, timeout=self.shutdown_timeout_s)
        await self._cancel_running()

    @hookimpl
    async def ksi_shutdown(self, context):
        await self._cancel_running()
        self.responses.close()

    async def _cancel_running(self) -> None:
        running = [job.task for job in self.scheduler.running
                   if job.task is not None and not job.task.done()]
        for task in running:
            task.cancel()
        if running:
            await asyncio.wait(running, timeout=2.0)

    def _providers(self) -> dict:
        return {offline_model.PROVIDER: offline_model.build_provider(),
                claude_cli.PROVIDER: claude_cli.build_provider(self.claude)}

    async def _emit_for_memory(self, event: str, data: dict):
        return await self.context.emit(event, data)

    # ---- events ------------------------------------------------------------------------------

    @event_handler("completion:async", returns=AsyncReply)
    def completion_async(self, data: CompletionRequest, ctx):
        """Queue a completion; its chunks and result arrive later as pushes."""
        job = self._submit(data, ctx)
        return {"request_id": job.request_id, "status": job.state,
                "session_id": job.session_id}

    @event_handler("completion:request", returns=CompletionResult, timeout=None)
    async def completion_request(self, data: CompletionRequest, ctx):
        """Ask a model and answer with its result once done (deadline: timeout_s)."""
        job = self._submit(data, ctx)
        # A future of its own: cancelling this handler must not cancel the job's outcome, and
        # a direct waiter wakes one loop turn sooner than asyncio.shield would.
        waiter = asyncio.get_running_loop().create_future()
        job.waiters.append(waiter)
        outcome = await waiter
        if isinstance(outcome, KSIError):
            raise outcome
        return outcome

    @event_handler("completion:cancel")
    def cancel(self, data: CancelRequest):
        """Cancel a queued or running completion; it ends with completion:cancelled."""
        job = self.jobs.get(data.request_id)
        if job is None:
            return {"request_id": data.request_id, "status": "not_found"}
        if job.finished:
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
            job = self.jobs.get(data.request_id)
            if job is None:
                raise KSIError(NOT_FOUND, f"no completion request {data.request_id}")
            return {"request_id": job.request_id, "status": job.state,
                    "session_id": job.session_id, "model": job.model,
                    "priority": job.priority, "attempts": job.attempts,
                    "queued_s": round((job.started_at or time.time()) - job.queued_at, 4)}
        return {"queued": self.scheduler.queued_count(),
                "processing": len(self.scheduler.running),
                "sessions_waiting": len(self.scheduler.waiting),
                "running_per_model": dict(self.scheduler.running_per_model),
                "max_concurrent": self.scheduler.max_concurrent,
                "litellm_ready": self.loader.is_ready, **self.counts}

    @event_handler("completion:models")
    def models(self, data: ModelsRequest):
        """The default model, configured aliases, and the built-in providers."""
        aliases = {name: (target if isinstance(target, str) else
                          {k: v for k, v in target.items() if k != "api_key"})
                   for name, target in self.aliases.items()}
        return {"default_model": self.default_model, "aliases": aliases,
                "models": sorted({self.default_model, *self.aliases}),
                "providers": [offline_model.PROVIDER, claude_cli.PROVIDER],
                "note": "any litellm model name is accepted as well",
                "litellm_ready": self.loader.is_ready}

    # ---- submitting ----------------------------------------------------------------------------

    def _submit(self, data: CompletionRequest, ctx) -> Job:
        request_id = data.request_id or uuid.uuid4().hex
        existing = self.jobs.get(request_id)
        if existing is not None and not existing.finished:
            raise KSIError(CONFLICT, f"completion request {request_id} is still in progress")
        model_name = data.model or self.default_model
        if self.loader.is_ready:
            self._resolve(model_name)  # unknown models are refused in the reply itself
        job = Job(request_id, data.session_id or uuid.uuid4().hex, model_name, data.priority,
                  data)
        job.ctx, job.attempts, job.cancel_requested = ctx, 0, False
        job.new_session = data.session_id is None
        job.queued_at, job.started_at = time.time(), None
        job.timeout_s = data.timeout_s or self.default_timeout_s
        self._remember(job)
        self._push(job, "completion:progress", {"request_id": request_id, "status": "queued"})
        self.scheduler.submit(job)
        return job

    def _remember(self, job: Job) -> None:
        self.jobs[job.request_id] = job
        self.jobs.move_to_end(job.request_id)
        while len(self.jobs) > FINISHED_KEPT:
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

    def _resolve_now(self, name: str) -> tuple[str, dict]:
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
        provider = name.split("/", 1)[0] if "/" in name else None
        if provider not in (offline_model.PROVIDER, claude_cli.PROVIDER):
            try:
                self.loader.module.get_llm_provider(name)
            except Exception:  # noqa: BLE001 - litellm says it cannot route this name
                known = ", ".join(sorted({self.default_model, *self.aliases})) or "none"
                raise KSIError(NOT_FOUND, f"unknown model {name!r}: it is neither a configured "
                               f"alias ({known}) nor a model name litellm can route; see "
                               "completion:models") from None
        return name, extra

    # ---- running -------------------------------------------------------------------------------

    async def _run(self, job: Job) -> None:
        job.started_at = time.time()
        self._push(job, "completion:progress",
                   {"request_id": job.request_id, "status": "processing"})
        try:
            async with asyncio.timeout(job.timeout_s):
                result = await self._complete(job)
        except asyncio.CancelledError:
            if job.cancel_requested:
                self._end_cancelled(job)
                return
            self._end_with_error(job, UNAVAILABLE, "the daemon stopped before this finished")
            raise
        except TimeoutError:
            self._end_with_error(job, TIMEOUT, f"the completion did not finish within "
                                 f"{job.timeout_s:g} s")
        except KSIError as exc:
            self._end_with_error(job, exc.code, exc.message)
        except Exception as exc:  # noqa: BLE001 - every failure ends as completion:error
            self._end_with_error(job, error_code_of(exc), _message_of(exc))
        else:
            self._end_with_result(job, result)

    async def _complete(self, job: Job) -> dict:
        request: CompletionRequest = job.payload
        started = time.perf_counter()
        litellm = await self.loader.ready()
        model, extra = self._resolve(job.model)
        new_messages = [{"role": "user", "content": request.prompt}] if request.prompt is not None \
            else [m.model_dump(exclude_none=True) for m in request.messages]
        history = [] if job.new_session else await self.memory.history(job.session_id)
        params = {k: v for k, v in (("temperature", request.temperature),
                                    ("max_tokens", request.max_tokens)) if v is not None}
        call = PreCallContext(job.request_id, job.session_id, model, history + new_messages,
                              {**extra, **params}, request.agent_id)
        await self.hooks.pre_call(call)
        answer = await self._call_with_retries(job, litellm, call)
        seen = PostResponseContext(job.request_id, job.session_id, call.model, call.messages,
                                   answer.text, answer.usage, answer.cost_usd, job.attempts,
                                   request.agent_id)
        await self.hooks.post_response(seen)
        result = CompletionResult(
            request_id=job.request_id, session_id=job.session_id, model=call.model,
            text=answer.text, usage=answer.usage, cost_usd=answer.cost_usd,
            duration_ms=round((time.perf_counter() - started) * 1000, 3),
            attempts=job.attempts, annotations=seen.annotations).model_dump()
        # The client gets its answer first; the session stays busy until the turns are stored,
        # so its next turn still sees this one, but the store's commit is not on the latency path.
        self._end_with_result(job, result)
        await asyncio.sleep(0)  # let a waiting completion:request send its reply first
        try:
            await self._store_turns(job, new_messages, answer.text, call.model, answer.usage)
        except Exception as exc:  # noqa: BLE001 - the answer is out; report, keep serving
            self.log.error("conversation_store_failed", session_id=job.session_id,
                           error=repr(exc))
        return result

    async def _store_turns(self, job: Job, new_messages: list[dict], text: str, model: str,
                           usage: dict) -> None:
        for message in new_messages:
            if message.get("role") != "system":
                await self.memory.append(job.session_id, message.get("role", "user"),
                                         str(message.get("content", "")),
                                         request_id=job.request_id)
        await self.memory.append(job.session_id, "assistant", text, model=model, usage=usage,
                                 request_id=job.request_id)

    async def _call_with_retries(self, job: Job, litellm, call: PreCallContext):
        index = 0

        def send_delta(delta: str) -> None:
            nonlocal index
            self._push(job, "completion:chunk",
                       {"request_id": job.request_id, "index": index, "delta": delta})
            index += 1

        while True:
            job.attempts += 1
            try:
                return await call_model(
                    litellm, call.model, call.messages, call.params, job.timeout_s,
                    job.session_id, send_delta if job.payload.stream else None)
            except (asyncio.CancelledError, KSIError):
                raise
            except Exception as exc:  # noqa: BLE001 - decide below whether to try again
                # Once text went out, a retry would repeat it: only fresh attempts are retried.
                if index or job.attempts >= self.retry.max_attempts or not is_transient(exc):
                    raise
                delay = self.retry.delay_before(job.attempts + 1, exc)
                self._push(job, "completion:retry", {
                    "request_id": job.request_id, "attempt": job.attempts + 1,
                    "delay_s": round(delay, 3), "reason": reason_of(exc)})
                await asyncio.sleep(delay)

    # ---- ending: exactly one of result, error, cancelled ------------------------------------

    def _end_with_result(self, job: Job, result: dict) -> None:
        if job.finished:
            return
        job.state = "completed"
        self.counts["completed"] += 1
        if job.payload.agent_id:
            result["agent_id"] = job.payload.agent_id
        try:
            self.responses.append(job.session_id, {**result, "timestamp": time.time()})
        except OSError as exc:
            self.log.error("response_log_failed", error=repr(exc))
        self._push(job, "completion:result", result)
        self._settle(job, result)

    def _end_with_error(self, job: Job, code: str, message: str) -> None:
        if job.finished:
            return
        job.state = "failed"
        self.counts["failed"] += 1
        self._push(job, "completion:error", {"request_id": job.request_id,
                                             "session_id": job.session_id,
                                             "error": {"code": code, "message": message}})
        self._settle(job, KSIError(code, message))

    def _end_cancelled(self, job: Job) -> None:
        if job.finished:
            return
        job.state = "cancelled"
        self.counts["cancelled"] += 1
        self._push(job, "completion:cancelled", {"request_id": job.request_id,
                                                 "session_id": job.session_id})
        self._settle(job, {"request_id": job.request_id, "session_id": job.session_id,
                             "status": "cancelled"})

    @staticmethod
    def _settle(job: Job, outcome) -> None:
        job.done.set_result(outcome)
        for waiter in job.waiters:
            if not waiter.done():
                waiter.set_result(outcome)

    def _push(self, job: Job, event: str, data: dict) -> None:
        job.ctx.push(event, data)


def _message_of(exc: BaseException) -> str:
    text = str(getattr(exc, "message", None) or exc) or type(exc).__name__
    return text if len(text) <= 2000 else text[:2000] + "…"
