"""The tools a model can be offered: KSI events and plugin-registered functions, by two names.

The KSI name is the event's ("state:get") or the one a plugin chose; the model name is what a
model sees and calls: ":" becomes "_", and it must match ^[A-Za-z0-9_-]{1,64}$ (the function
name rule of the model APIs). The registry keeps both directions, so a model's call is mapped
back without guessing; a second tool wanting a taken name is refused when it registers.
"""
from __future__ import annotations

import asyncio
import inspect
import re
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

import pydantic
import structlog

from ...event_system import json_schema_of

MODEL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
NO_PARAMETERS = {"type": "object", "properties": {}}
log = structlog.get_logger("ksi.plugin.tools")

# run(arguments, agent_id) -> the tool's JSON output
Runner = Callable[[dict, "str | None"], Awaitable[Any]]


def model_name_of(name: str) -> str:
    return name.replace(":", "_")


@dataclass(frozen=True)
class Tool:
    name: str
    model_name: str
    description: str
    parameters: dict
    source: str
    idempotent: bool
    explicit_only: bool
    timeout_s: float | None
    run: Runner

    def describe(self) -> dict:
        return {"name": self.name, "model_name": self.model_name,
                "description": self.description, "parameters": self.parameters,
                "source": self.source, "idempotent": self.idempotent,
                "explicit_only": self.explicit_only}


class ToolRegistry:
    def __init__(self):
        self.by_name: dict[str, Tool] = {}
        self.by_model_name: dict[str, Tool] = {}

    def add(self, tool: Tool) -> bool:
        """Register `tool`; False (and a log line) when its names are unusable or taken."""
        if not MODEL_NAME.fullmatch(tool.model_name):
            log.warning("tool_refused", tool=tool.name, source=tool.source,
                        reason=f"model name {tool.model_name!r} is not ^[A-Za-z0-9_-]{{1,64}}$")
            return False
        taken = self.by_name.get(tool.name) or self.by_model_name.get(tool.model_name)
        if taken is not None:
            log.warning("tool_refused", tool=tool.name, source=tool.source,
                        reason=f"its name collides with {taken.name} ({taken.source})")
            return False
        self.by_name[tool.name] = self.by_model_name[tool.model_name] = tool
        return True

    def find(self, name: str) -> Tool | None:
        """A tool by its KSI name or its model name."""
        return self.by_name.get(name) or self.by_model_name.get(name)

    def __iter__(self):
        return iter(self.by_name.values())


class PluginTools:
    """What `ksi_tools_register` receives: `add` for one plugin, its tools marked as its own."""

    def __init__(self, registry: ToolRegistry, plugin: str):
        self._registry, self._source = registry, f"plugin:{plugin}"

    def add(self, name: str, function: Callable, *, description: str | None = None,
            input: type | None = None, idempotent: bool = False,
            timeout_s: float | None = None, explicit_only: bool = False) -> bool:
        validate = pydantic.TypeAdapter(input).validate_python if input is not None else dict
        return self._registry.add(Tool(
            name=name, model_name=model_name_of(name),
            description=description or (function.__doc__ or "").strip().split("\n", 1)[0],
            parameters=json_schema_of(input) if input is not None else NO_PARAMETERS,
            source=self._source, idempotent=idempotent, explicit_only=explicit_only,
            timeout_s=timeout_s,
            run=function_runner(function, validate)))


def function_runner(function: Callable, validate: Callable[[dict], Any]) -> Runner:
    is_async = inspect.iscoroutinefunction(function)

    async def run(arguments: dict, agent_id: str | None) -> Any:
        value = validate(arguments)  # a pydantic ValidationError is the caller's validation_error
        if is_async:
            return await function(value)
        # A sync tool may block (files, subprocesses): off the loop, bounded by the caller's
        # timeout (the thread itself cannot be stopped, only no longer waited for).
        return await asyncio.to_thread(function, value)

    return run
