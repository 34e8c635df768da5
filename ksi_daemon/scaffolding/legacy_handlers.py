"""Reading an older KSI's command handler modules, without importing them.

They import the old daemon's modules (its registry, its managers), which no longer exist, so
they are parsed with `ast` instead. What is recognised, per module (docs/OPERATIONS.md,
"Scaffolding and migration", has the full description and examples/legacy_commands/ a sample):

- a class decorated `@command_handler("NAME")` (optionally `aliases=[...]`), or one that sets
  `command_name = "NAME"` in its body;
- its docstring (the summary, unless `get_help` gives a description);
- its `handle(self, parameters, writer, full_command)` method, kept as source to port;
- an optional `get_help` that returns a literal dict: `description`, and `parameters` as
  `{name: {"type", "description", "required" | "optional", "default"}}`.
"""
from __future__ import annotations

import ast
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


COMPUTED = object()  # a registration whose name is not a literal: a handler we cannot name


@dataclass(frozen=True)
class Parameter:
    name: str
    type: str = "any"
    description: str = ""
    required: bool = False
    default: Any = None


@dataclass
class LegacyCommand:
    name: str
    class_name: str
    line: int
    summary: str
    aliases: list[str] = field(default_factory=list)
    parameters: list[Parameter] | None = None  # None: get_help did not say; take any data
    handle_source: str = ""


@dataclass
class HandlerModule:
    path: Path
    commands: list[LegacyCommand]
    skipped: list[str]  # what in it could not be read, and why


def read_handlers_dir(directory: Path) -> tuple[list[HandlerModule], list[str]]:
    """The modules with at least one command, and a reason for every other `*.py` file."""
    modules, ignored = [], []
    for path in sorted(directory.glob("*.py")):
        if path.name.startswith(("_", ".")):
            continue
        try:
            module = read_handler_module(path)
        except (SyntaxError, UnicodeDecodeError, OSError) as exc:
            ignored.append(f"{path.name}: cannot be parsed ({exc})")
            continue
        if module.commands:
            modules.append(module)
        else:
            ignored.append(f"{path.name}: no command handler class in it")
        ignored += [f"{path.name}: {reason}" for reason in module.skipped]
    return modules, ignored


def read_handler_module(path: Path) -> HandlerModule:
    source = path.read_text(encoding="utf-8")
    tree = ast.parse(source, filename=str(path))
    commands, skipped = [], []
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            found = command_of(node, source)
            if isinstance(found, LegacyCommand):
                commands.append(found)
            elif found:
                skipped.append(found)
    return HandlerModule(path, commands, skipped)


def command_of(node: ast.ClassDef, source: str) -> LegacyCommand | str | None:
    """The command a class handles; a reason when it looks like a handler but cannot be used;
    None for any other class."""
    name, aliases = registration_of(node)
    if name is None:
        return None
    if not isinstance(name, str) or not name:
        return f"class {node.name}: the command name is not a string literal"
    methods = {item.name: item for item in node.body
               if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef))}
    if "handle" not in methods:
        return f"class {node.name} ({name}): no handle method"
    command = LegacyCommand(name=name, class_name=node.name, line=node.lineno,
                            summary=first_line(ast.get_docstring(node)),
                            aliases=[a for a in aliases if isinstance(a, str)],
                            handle_source=source_of(methods["handle"], source))
    if "get_help" in methods:
        apply_help(command, literal_returned_by(methods["get_help"]))
    return command


def source_of(function: ast.AST, source: str) -> str:
    """A method's source, dedented (the segment's first line has lost its indentation)."""
    segment = ast.get_source_segment(source, function) or ""
    return textwrap.dedent(" " * function.col_offset + segment)


def registration_of(node: ast.ClassDef) -> tuple[Any, list]:
    """(command name, aliases) from `@command_handler(...)` or a `command_name = ...` line."""
    for decorator in node.decorator_list:
        if isinstance(decorator, ast.Call) and called_name(decorator.func) == "command_handler":
            keywords = {k.arg: k.value for k in decorator.keywords}
            given = keywords.get("command_name", decorator.args[0] if decorator.args else None)
            name = COMPUTED if given is None else literal_or_computed(given)
            aliases = literal(keywords.get("aliases") or (decorator.args[1]
                                                          if len(decorator.args) > 1 else None))
            return name, list(aliases) if isinstance(aliases, (list, tuple)) else []
    for item in node.body:
        if isinstance(item, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "command_name"
                                                for t in item.targets):
            return literal_or_computed(item.value), []
    return None, []


def literal_or_computed(node: ast.expr) -> Any:
    value = literal(node)
    return COMPUTED if value is None else value


def called_name(func: ast.expr) -> str | None:
    if isinstance(func, ast.Name):
        return func.id
    return func.attr if isinstance(func, ast.Attribute) else None


def literal(node: ast.expr | None) -> Any:
    """The value of a literal expression; None for anything computed."""
    try:
        return ast.literal_eval(node) if node is not None else None
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return None


def literal_returned_by(function: ast.FunctionDef | ast.AsyncFunctionDef) -> Any:
    for node in ast.walk(function):
        if isinstance(node, ast.Return):
            value = literal(node.value)
            if isinstance(value, dict):
                return value
    return None


def apply_help(command: LegacyCommand, help_: dict | None) -> None:
    if not help_:
        return
    if isinstance(help_.get("description"), str) and help_["description"].strip():
        command.summary = first_line(help_["description"])
    declared = help_.get("parameters")
    if isinstance(declared, dict):
        command.parameters = [parameter_of(name, spec) for name, spec in declared.items()
                              if isinstance(name, str) and name]


def parameter_of(name: str, spec: Any) -> Parameter:
    if not isinstance(spec, dict):
        return Parameter(name)
    has_default = "default" in spec
    required = bool(spec.get("required")) and not spec.get("optional") and not has_default
    return Parameter(name=name, type=str(spec.get("type", "any")).lower(),
                     description=str(spec.get("description", "")), required=required,
                     default=spec.get("default"))


def first_line(text: str | None) -> str:
    return (text or "").strip().split("\n", 1)[0].strip()
