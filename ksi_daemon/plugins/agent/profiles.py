"""Agent profiles: the built-in set, plus YAML or JSON files in `var/agent_profiles/`.

A profile file holds one profile (a mapping with the fields of `Profile`; `name` defaults to the
file's stem). A file profile with a built-in's name replaces it. A file that cannot be read or
does not validate is reported (`agent:profiles` lists it under `errors`, the log warns once per
change) and skipped: one bad file never stops the daemon or hides the good ones.

The directory is looked at again whenever a profile is asked for, but a file is parsed only when
its size or modification time changed, so spawning a thousand agents costs a thousand directory
scans of a few entries, not a thousand YAML parses.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

import orjson
import structlog
import yaml
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

log = structlog.get_logger("ksi.plugin.agent")
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
SUFFIXES = (".yaml", ".yml", ".json")
# An MCP server's name prefixes its tools' names; what a server may be is the tools plugin's
# to say (tools:mcp_attach validates it at spawn), so only the name is checked here.
MCP_SERVER_NAME = r"^[A-Za-z0-9][A-Za-z0-9-]{0,31}$"
BUILTIN = "builtin"
# What agent:send does while a turn runs (docs/AGENTS.md, "When a message arrives mid-turn").
BusyPolicy = Literal["enqueue", "reject", "interrupt", "rollback"]


class Profile(BaseModel):
    """What an agent is: its model, its instructions, how long it may talk."""
    model_config = ConfigDict(extra="forbid")

    name: str = Field("custom", pattern=NAME_PATTERN)
    model: str | None = Field(None, max_length=256,
                              description="a litellm model or alias; none: completion's default")
    system_prompt: str = Field("", max_length=100_000)
    temperature: float | None = Field(None, ge=0, le=2)
    max_turns: int = Field(20, ge=1, le=100_000,
                           description="replies the agent gives in its session, then it stops")
    tools: list[str] = Field(default_factory=list, max_length=256,
                             description="event or tool names the agent's model may call "
                                         "(docs/TOOLS.md); naming an explicit-only one allows it")
    mcp_servers: dict[Annotated[str, StringConstraints(pattern=MCP_SERVER_NAME)], dict] = Field(
        default_factory=dict, max_length=16,
        description="MCP servers whose tools join the agent's: name -> {command, args?, env?, "
                    "cwd?} (stdio) or {url} (streamable HTTP on loopback); the tools are "
                    "<name>__<tool> to the model (docs/TOOLS.md, MCP tool servers)")
    max_tool_steps: int | None = Field(None, ge=1, le=64,
                                       description="rounds of tool calls per turn; none: 8")
    on_busy: BusyPolicy = Field(
        "enqueue", description="what agent:send does while a turn runs: enqueue (wait your "
                               "turn), reject (conflict), interrupt (stop the turn, then answer "
                               "this), rollback (stop the turn and forget it, then answer this)")

    def offered_tools(self) -> list[str]:
        """What the agent's turns offer the model: its tools, and every tool of each of its
        MCP servers (`mcp:<server>`, which the tools plugin resolves for this agent)."""
        return [*self.tools, *(f"mcp:{name}" for name in self.mcp_servers)]


def _builtin(name: str, temperature: float, max_turns: int, prompt: str) -> Profile:
    return Profile(name=name, temperature=temperature, max_turns=max_turns, system_prompt=prompt)


BUILTIN_PROFILES: dict[str, Profile] = {p.name: p for p in (
    _builtin("assistant", 0.7, 50, "You are a helpful assistant. Answer clearly and concisely, "
             "and say so when you are not sure."),
    _builtin("debater", 0.8, 10, "You are a debater. Take a clear position, answer your "
             "opponent's last argument directly, and add one new point each turn."),
    _builtin("collaborator", 0.7, 20, "You are a collaborator. Build on what the others said, "
             "fill the gaps you see, and move the shared work forward."),
    _builtin("teacher", 0.5, 20, "You are a patient teacher. Explain step by step with small "
             "examples, then check understanding with one question."),
    _builtin("student", 0.7, 20, "You are a curious student. Restate what you learned in your "
             "own words and ask about what is still unclear."),
    _builtin("creative", 1.0, 20, "You are a creative thinker. Offer unexpected ideas, "
             "analogies and combinations; quantity first, judgement later."),
    _builtin("critic", 0.4, 20, "You are a constructive critic. Point out weaknesses, risks and "
             "missing evidence, and suggest how to fix each one."),
    _builtin("analyst", 0.3, 20, "You are an analyst. Break the problem into parts, weigh the "
             "evidence for each, and state your conclusion with its confidence."),
    _builtin("researcher", 0.4, 20, "You are a researcher. Say what is known, what is disputed "
             "and what would settle it; separate facts from guesses."),
)}


class ProfileBook:
    """Built-in profiles overlaid with the profile files of one directory."""

    def __init__(self, directory: Path):
        self.directory = directory
        # file name -> ((size, mtime_ns), Profile | None, error | None)
        self._files: dict[str, tuple[tuple[int, int], Profile | None, str | None]] = {}

    def refresh(self) -> None:
        seen: dict[str, tuple] = {}
        try:
            entries = list(os.scandir(self.directory))
        except FileNotFoundError:
            entries = []
        except OSError as exc:
            log.warning("agent_profiles_unreadable", directory=str(self.directory),
                        error=str(exc))
            entries = []
        for entry in entries:
            if not entry.name.endswith(SUFFIXES) or entry.name.startswith("."):
                continue
            try:
                stat = entry.stat()
            except OSError:
                continue
            stamp = (stat.st_size, stat.st_mtime_ns)
            known = self._files.get(entry.name)
            if known is not None and known[0] == stamp:
                seen[entry.name] = known
                continue
            profile, error = read_profile_file(Path(entry.path))
            if error is not None:
                log.warning("agent_profile_file_rejected", file=entry.path, error=error)
            seen[entry.name] = (stamp, profile, error)
        self._files = seen

    def profiles(self) -> dict[str, tuple[Profile, str]]:
        """name -> (profile, source), files overriding built-ins; the first file wins a tie."""
        found = {name: (profile, BUILTIN) for name, profile in BUILTIN_PROFILES.items()}
        overridden: set[str] = set()
        for file_name in sorted(self._files):
            _stamp, profile, _error = self._files[file_name]
            if profile is not None and profile.name not in overridden:
                found[profile.name] = (profile, str(self.directory / file_name))
                overridden.add(profile.name)
        return found

    def get(self, name: str) -> Profile | None:
        self.refresh()
        entry = self.profiles().get(name)
        return entry[0] if entry else None

    def errors(self) -> list[dict]:
        return [{"file": str(self.directory / name), "error": error}
                for name, (_stamp, _profile, error) in sorted(self._files.items())
                if error is not None]


def read_profile_file(path: Path) -> tuple[Profile | None, str | None]:
    """(profile, None) or (None, what is wrong with the file)."""
    try:
        raw = path.read_bytes()
        data = orjson.loads(raw) if path.suffix == ".json" else yaml.safe_load(raw)
    except (OSError, orjson.JSONDecodeError, yaml.YAMLError) as exc:
        return None, f"unreadable: {exc}".replace("\n", " ")[:500]
    if not isinstance(data, dict):
        return None, "a profile file holds one mapping (name, model, system_prompt, " \
                     "temperature, max_turns)"
    data.setdefault("name", path.stem)
    try:
        return Profile.model_validate(data), None
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'profile'}: {e['msg']}"
                             for e in exc.errors())
        return None, f"invalid: {problems}"[:500]
