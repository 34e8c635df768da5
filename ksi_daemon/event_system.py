"""Function-style plugins: decorate handlers with @event_handler("ns:action").

    from ksi_daemon.event_system import event_handler

    @event_handler("my:custom:event")
    async def handle_custom_event(data):
        return {"status": "processed"}

A handler takes `(data)` or `(data, ctx)`, may be sync or async, and returns a dict, a pydantic
model or None. If its first parameter is annotated with a pydantic model, requests are validated
against it (`validation_error` on failure) and the handler receives the model instance; with a
TypedDict (pydantic validates those too), it receives the validated dict, which is cheaper.
"""
from __future__ import annotations

import fnmatch
import inspect
import sys
import types
import typing
from typing import Annotated, Any, Callable, Literal, Union

import pydantic
import typing_extensions
from typing_extensions import NotRequired, Required, is_typeddict

HANDLER_ATTRIBUTE = "__ksi_event_handler__"
DEFAULT_TIMEOUT = "event_timeout"  # the daemon's `event_timeout` setting


class HandlerSpec:
    """What @event_handler records on a function; read by the plugin manager at load time."""
    __slots__ = ("event", "model", "summary", "returns", "override", "aliases", "timeout",
                 "internal", "streams")

    def __init__(self, event, model, summary, returns, override, aliases, timeout, internal,
                 streams):
        self.event, self.model, self.summary = event, model, summary
        self.returns, self.override, self.aliases = returns, override, tuple(aliases)
        self.timeout, self.internal, self.streams = timeout, internal, streams


def event_handler(event: str, *, model: type | None = None, summary: str | None = None,
                  returns: type | None = None, override: bool = False,
                  aliases: tuple[str, ...] = (), timeout: float | None | str = DEFAULT_TIMEOUT,
                  internal: bool = False, streams: bool = False) -> Callable[[Callable], Callable]:
    """Declare `func` the handler of `event`.

    model: pydantic model for `data` (default: the first parameter's annotation, if a model).
    summary: one line for system:discover (default: the docstring's first line).
    returns: pydantic model describing the reply data, shown by system:help.
    override: take over an event another plugin already handles.
    aliases: other names answered by the same handler.
    timeout: seconds an async handler may run before the reply is `timeout`; None for handlers
        that enforce their own deadline (default: the daemon's `event_timeout`).
    internal: only plugins may send it (`ctx.emit`); a client sending it gets `forbidden`.
        For deliveries between plugins whose data a client could forge (`agent:inbox`).
    streams: the pushes carrying the request's correlation id are part of its answer and go
        out as they come (completion:request's chunks). By default they wait until its reply
        is sent, so that the reply is the first line with that id (PROTOCOL.md §1).
    """
    def mark(func: Callable) -> Callable:
        specs = getattr(func, HANDLER_ATTRIBUTE, ())
        setattr(func, HANDLER_ATTRIBUTE,
                (*specs, HandlerSpec(event, model, summary, returns, override, aliases, timeout,
                            internal, streams)))
        return func
    return mark


def is_schema(annotation: Any) -> bool:
    """Whether requests can be validated against `annotation`: a pydantic model or a TypedDict."""
    return is_typeddict(annotation) or (
        inspect.isclass(annotation) and issubclass(annotation, pydantic.BaseModel))


def pydantic_ready(schema: Any) -> Any:
    """`schema` as pydantic accepts it on this Python.

    Before Python 3.12 pydantic refuses a `typing.TypedDict` ("Please use
    `typing_extensions.TypedDict`"), the style of the seeds' event schemas. Such a TypedDict, and
    any inside it, is rebuilt as a `typing_extensions.TypedDict` with the same name, fields and
    required keys; everything else is returned as it is.
    """
    return _converted(schema) if _TYPING_TYPEDDICT_REFUSED else schema


_TYPING_TYPEDDICT_REFUSED = sys.version_info < (3, 12)
_rebuilt: dict[type, type] = {}  # one rebuilt class per TypedDict, shared by its handlers


def _converted(annotation: Any) -> Any:
    if is_typeddict(annotation) and type(annotation).__module__ == "typing":
        return _rebuilt_typeddict(annotation)
    args = typing.get_args(annotation)
    origin = typing.get_origin(annotation)
    if not args or origin is Literal:
        return annotation
    converted = tuple(_converted(arg) for arg in args)
    if all(new is old for new, old in zip(converted, args)):
        return annotation
    if origin is Annotated:
        return Annotated[converted]
    if origin in (Union, types.UnionType):
        return Union[converted]
    try:
        return origin[converted if len(converted) > 1 else converted[0]]
    except TypeError:  # an alias that cannot be rebuilt so: pydantic will say what it refuses
        return annotation


def _rebuilt_typeddict(schema: type) -> type:
    if schema in _rebuilt:
        return _rebuilt[schema]
    _rebuilt[schema] = schema  # a TypedDict that refers to itself stays as it is
    fields = {}
    for key, annotation in typing.get_type_hints(schema, include_extras=True).items():
        if typing.get_origin(annotation) in (Required, NotRequired, typing_extensions.Required,
                                            typing_extensions.NotRequired):
            annotation = typing.get_args(annotation)[0]
        # Required/NotRequired per key keeps the totality of every class it inherits from.
        marker = Required if key in schema.__required_keys__ else NotRequired
        fields[key] = marker[_converted(annotation)]
    rebuilt = typing_extensions.TypedDict(schema.__name__, fields)
    rebuilt.__module__, rebuilt.__qualname__ = schema.__module__, schema.__qualname__
    rebuilt.__doc__ = schema.__doc__
    if "__pydantic_config__" in schema.__dict__:
        rebuilt.__pydantic_config__ = schema.__pydantic_config__
    _rebuilt[schema] = rebuilt
    return rebuilt


def validator_of(schema: type | None) -> Callable[[Any], Any] | None:
    """`schema`'s validate_python, called by the router without pydantic's Python wrapper around
    it (a microsecond per request on a slow core)."""
    if schema is None:
        return None
    validator = getattr(schema, "__pydantic_validator__", None)
    if validator is None:  # a TypedDict
        validator = pydantic.TypeAdapter(schema).validator
    return validator.validate_python


def json_schema_of(schema: type) -> dict:
    if hasattr(schema, "model_json_schema"):
        return schema.model_json_schema()
    return pydantic.TypeAdapter(schema).json_schema()


def handler_specs(obj: Any) -> tuple[HandlerSpec, ...]:
    return getattr(obj, HANDLER_ATTRIBUTE, ())


def compile_pattern(pattern: str) -> Callable[[str], bool]:
    """A matcher for a subscription pattern: "*", "ns:*" (a prefix) or any fnmatch pattern."""
    if pattern == "*":
        return lambda event: True
    if pattern.endswith(":*") and not any(c in pattern[:-2] for c in "*?["):
        prefix = pattern[:-1]
        return lambda event: event.startswith(prefix)
    return lambda event: fnmatch.fnmatchcase(event, pattern)


async def call_hook(func: Callable, argnames: tuple[str, ...], **available) -> Any:
    """Call one hook implementation with the arguments it names; await what it returns."""
    result = func(**{name: available[name] for name in argnames})
    if inspect.isawaitable(result):
        result = await result
    return result
