"""`claude-cli/<model>`: a litellm custom provider that runs the `claude` command-line tool.

Each call is one `claude -p` run as an async subprocess in its own process group, with a hard
deadline; cancelling the call kills the group, and a failed run carries its stderr into the error.
The tool keeps conversations itself, so a KSI session is mapped to a claude session id and later
turns pass `--resume <id>` with only the new message (the mapping is saved, so it survives a
daemon restart). A session the tool does not know yet gets the earlier turns as a transcript.

A request with tools runs `claude` with the MCP config the mcp plugin issued for it
(`--mcp-config`, `--strict-mcp-config`: KSI's server and no other), and only those tools
allowed (`--allowedTools mcp__ksi__<tool>,...`): the tool runs its own loop, calling KSI over
HTTP with the agent's token, so every call is the agent's.
"""
from __future__ import annotations

import asyncio
import os
import shutil
import signal
from pathlib import Path

import orjson

PROVIDER = "claude-cli"
STDERR_KEPT = 4000


def runs(model: str) -> bool:
    """Whether `model` (a litellm name, aliases resolved) is run by the `claude` tool."""
    return model.startswith(f"{PROVIDER}/")


class ClaudeRunError(Exception):
    def __init__(self, status_code: int, message: str):
        super().__init__(message)
        self.status_code, self.message = status_code, message


class ClaudeSessions:
    """KSI session id -> claude session id, kept in a small JSON file."""

    def __init__(self, path: Path | None):
        self.path = path
        self.known: dict[str, str] = {}
        if path is not None and path.is_file():
            try:
                self.known = orjson.loads(path.read_bytes())
            except orjson.JSONDecodeError:
                self.known = {}

    def get(self, ksi_session: str | None) -> str | None:
        return self.known.get(ksi_session) if ksi_session else None

    def remember(self, ksi_session: str | None, claude_session: str | None) -> None:
        if not ksi_session or not claude_session or self.known.get(ksi_session) == claude_session:
            return
        self.known[ksi_session] = claude_session
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            temporary = self.path.with_suffix(".tmp")
            temporary.write_bytes(orjson.dumps(self.known))
            temporary.replace(self.path)


class ClaudeRunner:
    def __init__(self, binary: str = "claude", hard_timeout_s: float = 600.0,
                 extra_args: list[str] | None = None, sessions: ClaudeSessions | None = None,
                 cwd: str | None = None):
        self.binary, self.hard_timeout_s = binary, hard_timeout_s
        self.extra_args = list(extra_args or [])
        self.sessions = sessions or ClaudeSessions(None)
        self.cwd = cwd

    def command(self, model: str, messages: list[dict], ksi_session: str | None,
                streaming: bool, mcp: dict | None = None) -> list[str]:
        executable = shutil.which(self.binary) or self.binary
        resume = self.sessions.get(ksi_session)
        prompt = prompt_for(messages, resumed=resume is not None)
        args = [executable, "-p", prompt, "--model", model, "--output-format",
                "stream-json" if streaming else "json"]
        if streaming:
            args += ["--verbose", "--include-partial-messages"]
        if resume:
            args += ["--resume", resume]
        system = "\n\n".join(str(m["content"]) for m in messages if m.get("role") == "system")
        if system:
            args += ["--append-system-prompt", system]
        if mcp is not None:
            # A path, not the JSON: the config holds the agent's token, which a command line
            # would show to every local user.
            args += ["--mcp-config", mcp["path"], "--strict-mcp-config",
                     "--allowedTools", ",".join(mcp["allowed_tools"])]
        return args + self.extra_args

    async def run_json(self, model, messages, ksi_session, timeout, mcp=None) -> dict:
        """Run once with `--output-format json`; return the tool's result object."""
        async with self._process(self.command(model, messages, ksi_session, False, mcp),
                                 timeout) as process:
            stdout, stderr = await process.communicate()
        result = _last_json_object(stdout)
        self._check(process.returncode, result, stderr)
        self.sessions.remember(ksi_session, result.get("session_id"))
        return result

    async def run_stream(self, model, messages, ksi_session, timeout, mcp=None):
        """Run with `stream-json`; yield ("delta", text) pieces, then ("result", object)."""
        async with self._process(self.command(model, messages, ksi_session, True, mcp),
                                 timeout) as process:
            stderr_task = asyncio.ensure_future(process.stderr.read())
            streamed = False
            result: dict = {}
            async for line in process.stdout:
                event = _json_or_none(line)
                if event is None:
                    continue
                delta = _text_delta(event)
                if delta:
                    streamed = True
                    yield "delta", delta
                elif event.get("type") == "result":
                    result = event
            await process.wait()
            stderr = await stderr_task
        self._check(process.returncode, result, stderr)
        if not streamed and result.get("result"):
            yield "delta", result["result"]
        self.sessions.remember(ksi_session, result.get("session_id"))
        yield "result", result

    def _process(self, args: list[str], timeout: float | None):
        return _Subprocess(args, min(timeout or self.hard_timeout_s, self.hard_timeout_s),
                           self.cwd)

    @staticmethod
    def _check(returncode: int | None, result: dict, stderr: bytes) -> None:
        tail = stderr.decode(errors="replace")[-STDERR_KEPT:].strip()
        if returncode != 0 or not result or result.get("is_error"):
            detail = str(result.get("result") or result.get("error") or "").strip()
            message = f"claude exited with status {returncode}"
            if detail:
                message += f": {detail}"
            if tail:
                message += f"; stderr: {tail}"
            if not result and returncode == 0:
                message = "claude printed no result" + (f"; stderr: {tail}" if tail else "")
            raise ClaudeRunError(_status_from(detail or tail), message)


class _Subprocess:
    """`async with`: start the run in its own process group; kill the group on any exit path
    that leaves it running (deadline, cancellation, an error while reading)."""

    def __init__(self, args: list[str], deadline_s: float, cwd: str | None):
        self.args, self.deadline_s, self.cwd = args, deadline_s, cwd
        self.process: asyncio.subprocess.Process | None = None

    async def __aenter__(self) -> asyncio.subprocess.Process:
        try:
            self.process = await asyncio.create_subprocess_exec(
                *self.args, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE, start_new_session=True, cwd=self.cwd,
                limit=16 * 1024 * 1024)
        except FileNotFoundError:
            raise ClaudeRunError(404, f"the claude command-line tool was not found "
                                 f"({self.args[0]}); install @anthropic-ai/claude-code or set "
                                 "plugins.completion.claude_cli.binary") from None
        self.timer = asyncio.get_running_loop().call_later(self.deadline_s, self._expire)
        self.expired = False
        return self.process

    def _expire(self) -> None:
        self.expired = True
        self._kill()

    def _kill(self) -> None:
        if self.process is not None and self.process.returncode is None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    async def __aexit__(self, exc_type, exc, tb) -> None:
        self.timer.cancel()
        if self.process.returncode is None:
            self._kill()
            await asyncio.shield(self.process.wait())
        if self.expired:
            raise ClaudeRunError(408, f"claude did not finish within {self.deadline_s:g} s "
                                 "and was killed")


def prompt_for(messages: list[dict], resumed: bool) -> str:
    """What to pass as the prompt: the new message, plus a transcript when claude lacks it."""
    turns = [m for m in messages if m.get("role") in ("user", "assistant")]
    if not turns:
        return ""
    last = str(turns[-1]["content"])
    if resumed or len(turns) == 1:
        return last
    transcript = "\n\n".join(f"{m['role'].title()}: {m['content']}" for m in turns[:-1])
    return f"Conversation so far:\n\n{transcript}\n\nUser: {last}"


def usage_of(result: dict) -> dict:
    usage = result.get("usage") or {}
    prompt = sum(int(usage.get(k) or 0) for k in ("input_tokens", "cache_read_input_tokens",
                                                   "cache_creation_input_tokens"))
    completion = int(usage.get("output_tokens") or 0)
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion}


def _text_delta(event: dict) -> str | None:
    if event.get("type") != "stream_event":
        return None
    inner = event.get("event") or {}
    delta = inner.get("delta") or {}
    if inner.get("type") == "content_block_delta" and delta.get("type") == "text_delta":
        return delta.get("text")
    return None


def _json_or_none(line: bytes):
    line = line.strip()
    if not line.startswith(b"{"):
        return None
    try:
        value = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def _last_json_object(stdout: bytes) -> dict:
    whole = _json_or_none(stdout)
    if whole is not None:
        return whole
    for line in reversed(stdout.splitlines()):
        value = _json_or_none(line)
        if value is not None:
            return value
    return {}


def _status_from(text: str) -> int:
    lowered = text.lower()
    if "rate limit" in lowered or "429" in lowered:
        return 429
    if "overloaded" in lowered or "529" in lowered:
        return 529
    if "authentication" in lowered or "api key" in lowered or "401" in lowered:
        return 401
    return 500


def build_provider(runner: ClaudeRunner):
    """The litellm custom provider; called from the thread that imports litellm."""
    import litellm
    from litellm import CustomLLM
    from litellm.types.utils import ModelResponse

    def metadata_of(kwargs) -> dict:
        return (kwargs.get("litellm_params") or {}).get("metadata") or {}

    def session_of(kwargs) -> str | None:
        return metadata_of(kwargs).get("ksi_session_id")

    def mcp_of(kwargs) -> dict | None:
        return metadata_of(kwargs).get("ksi_mcp")

    class ClaudeCLI(CustomLLM):
        async def acompletion(self, model, messages, *args, **kwargs):
            result = await runner.run_json(model, messages, session_of(kwargs),
                                           _seconds(kwargs.get("timeout")), mcp_of(kwargs))
            response = ModelResponse(
                model=f"{PROVIDER}/{model}",
                choices=[{"message": {"role": "assistant", "content": result.get("result", "")},
                          "finish_reason": "stop", "index": 0}],
                usage=litellm.Usage(**usage_of(result)))
            response._hidden_params["ksi_cost_usd"] = result.get("total_cost_usd")
            return response

        async def astreaming(self, model, messages, *args, **kwargs):
            async for kind, value in runner.run_stream(model, messages, session_of(kwargs),
                                                       _seconds(kwargs.get("timeout")),
                                                       mcp_of(kwargs)):
                if kind == "delta":
                    yield {"text": value, "is_finished": False, "finish_reason": "",
                           "usage": None, "index": 0, "tool_use": None}
                else:
                    yield {"text": "", "is_finished": True, "finish_reason": "stop",
                           "usage": usage_of(value), "index": 0, "tool_use": None}

    return ClaudeCLI()


def _seconds(timeout) -> float | None:
    if timeout is None or isinstance(timeout, (int, float)):
        return timeout
    return getattr(timeout, "read", None) or getattr(timeout, "connect", None)
