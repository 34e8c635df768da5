"""Writing one plugin module (function style, docs/PLUGINS.md (b) and (c)) for one module of
legacy command handlers.

Each command becomes `@event_handler("<namespace>:<command in lower case>")`: in a namespace of
its own (`legacy` by default) so that no skeleton collides with a built-in event that already
does the same job (GET_AGENTS is `agent:list`). Its parameters, as `get_help` declared them,
become a pydantic model, so the skeleton validates what it is sent. Its body answers
`{"command", "ported": false, "parameters"}` until someone ports the legacy `handle`, which is
kept beside it as a comment.
"""
from __future__ import annotations

import keyword
import re

from .legacy_handlers import HandlerModule, LegacyCommand, Parameter

PYTHON_TYPES = {"string": "str", "str": "str", "integer": "int", "int": "int",
                "number": "float", "float": "float", "boolean": "bool", "bool": "bool",
                "object": "dict", "dict": "dict", "array": "list", "list": "list"}
RESERVED_FIELDS = {"model_config", "model_fields", "model_dump", "model_validate", "copy",
                   "dict", "json", "schema"}


def event_name(namespace: str, command: str) -> str:
    return f"{namespace}:{identifier(command)}"


def identifier(text: str) -> str:
    """`GET_AGENTS` -> `get_agents`; anything else than [a-z0-9_] becomes `_`."""
    name = re.sub(r"[^a-z0-9_]", "_", text.lower()).strip("_") or "command"
    return name if not name[0].isdigit() else f"c_{name}"


def plugin_name(namespace: str, module: HandlerModule) -> str:
    return f"{namespace}_{identifier(module.path.stem)}"


def plugin_module_source(module: HandlerModule, namespace: str) -> str:
    name = plugin_name(namespace, module)
    parts = [f'''"""Plugin skeleton generated from {module.path.name} (legacy command handlers).

Commands: {", ".join(c.name for c in module.commands)}. Each event answers
{{"command", "ported": false, "parameters"}} until its legacy `handle` (kept below as a
comment) is ported. Load it with `python -m ksi_daemon --plugin-dir <this directory>`.
"""
from __future__ import annotations

{"from typing import Any" + chr(10) + chr(10) if uses_any(module) else ""}from pydantic import BaseModel, ConfigDict, Field

from ksi_daemon.event_system import event_handler

PLUGIN_METADATA = {{"name": {name!r}, "version": "0.1.0",
                   "description": {f"Generated from the legacy handlers in {module.path.name}"!r}}}
''']
    parts += [command_source(command, namespace, module) for command in module.commands]
    return "\n\n".join(parts)


def uses_any(module: HandlerModule) -> bool:
    return any(PYTHON_TYPES.get(parameter.type) is None for command in module.commands
               for parameter in command.parameters or [])


def docstring(text: str) -> str:
    """`text` as a triple-quoted docstring, or as a plain literal when it cannot be one."""
    if "\\" in text or '"""' in text or text.endswith('"'):
        return repr(text)
    return f'"""{text}"""'


def command_source(command: LegacyCommand, namespace: str, module: HandlerModule) -> str:
    function = identifier(command.name)
    model = "".join(part.capitalize() for part in function.split("_")) + "Parameters"
    aliases = [event_name(namespace, alias) for alias in command.aliases]
    alias_text = f", aliases={tuple(aliases)!r}" if aliases else ""
    summary = command.summary or f"The legacy command {command.name}."
    legacy = "\n".join(f"    #     {line}".rstrip() for line in
                       command.handle_source.splitlines()) or "    #     (no source found)"
    return f'''class {model}(BaseModel):
    """Parameters of the legacy command {command.name}{"" if command.parameters is not None
                                                      else " (get_help declared none: any)"}."""
    model_config = ConfigDict(extra="allow", populate_by_name=True){fields_source(command.parameters)}


@event_handler({event_name(namespace, command.name)!r}{alias_text})
async def {function}(data: {model}, ctx) -> dict:
    {docstring(summary)}
    # The legacy handler, {module.path.name}:{command.line}, class {command.class_name}:
{legacy}
    # To port it: read `data` where it read `parameters`; reach what its managers did through
    # events (`await ctx.emit("agent:list")`, `await ctx.emit("state:set", {{...}})`); return a
    # dict; raise ksi_daemon.protocol.KSIError(code, message) where it returned an error.
    return {{"command": {command.name!r}, "ported": False,
            "parameters": data.model_dump(by_alias=True)}}
'''


def fields_source(parameters: list[Parameter] | None) -> str:
    """The model's field lines, each starting with a newline (none: the model takes any data)."""
    lines = []
    for parameter in parameters or []:
        attribute = identifier(parameter.name)
        if keyword.iskeyword(attribute) or attribute in RESERVED_FIELDS:
            attribute = f"{attribute}_"
        python_type = PYTHON_TYPES.get(parameter.type, "Any")
        options = [] if parameter.required else [f"default={parameter.default!r}"]
        if attribute != parameter.name:
            options.append(f"alias={parameter.name!r}")
        if parameter.description:
            options.append(f"description={parameter.description!r}")
        annotation = python_type if parameter.required or parameter.default is not None \
            else f"{python_type} | None"
        lines.append(f"\n    {attribute}: {annotation} = Field({', '.join(options)})")
    return "".join(lines)
