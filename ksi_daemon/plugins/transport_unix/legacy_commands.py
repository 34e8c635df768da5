"""The legacy command protocol of control.sock (the deployment guide's compatibility mode).

    {"command": "GET_AGENTS", "parameters": {}}
      -> {"event": "agent:list", "data": {}, "correlation_id": "legacy-7"}    (to the router)
      <- the reply to legacy-7, as
    {"status": "success", "command": "GET_AGENTS", "result": {"agents": {...}}}
    {"status": "error", "command": "GET_AGENTS", "error": {"code": ..., "message": ...}}

`COMMANDS` is the table (docs/OPERATIONS.md, "Compatibility mode", shows it with each event):
the command's event, how its parameters become the event's data, how the reply data becomes
its `result`. Parameters in upstream's dialect (`profile_name`, `event_type`, `client_id`)
pass as they are: the compat plugin's adapters read them, for commands and upstream event
clients alike. Error codes are the event protocol's closed set (docs/PROTOCOL.md).
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable

import orjson

from ...core.protocol import INVALID_REQUEST, UNKNOWN_EVENT

_ids = itertools.count(1)
_dumps, _APPEND_NEWLINE = orjson.dumps, orjson.OPT_APPEND_NEWLINE


def _same(value: dict) -> dict:
    return value


def _kv_set_data(parameters: dict) -> dict:
    """SET_AGENT_KV's key/value in the global namespace; `expires_at` (ISO) becomes ttl_s;
    `owner_agent_id`, `scope` and `metadata` have no equivalent and are dropped."""
    data = {k: v for k, v in parameters.items()
            if k not in ("owner_agent_id", "scope", "metadata", "expires_at")}
    expires_at = parameters.get("expires_at")
    if isinstance(expires_at, str):
        try:
            moment = datetime.fromisoformat(expires_at.replace("Z", "+00:00"))
        except ValueError:
            data["ttl_s"] = expires_at  # the schema refuses it, naming ttl_s
        else:
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=timezone.utc)
            data["ttl_s"] = moment.timestamp() - datetime.now(timezone.utc).timestamp()
    return data


def _completion_data(parameters: dict) -> dict:
    data = {k: v for k, v in parameters.items() if k not in ("timeout", "metadata")}
    if "timeout" in parameters:
        data["timeout_s"] = parameters["timeout"]
    return data


def _agents_by_id(data: dict) -> dict:
    # the legacy GET_AGENTS answered {"agents": {agent_id: record}}
    return {"agents": {agent["agent_id"]: agent for agent in data.get("agents", [])},
            "count": data.get("count", 0)}


@dataclass(frozen=True)
class LegacyCommand:
    event: str
    data_of: Callable[[dict], dict] = _same  # parameters -> the event's data
    result_of: Callable[[dict], dict] = _same  # the reply's data -> the legacy `result`


COMMANDS: dict[str, LegacyCommand] = {
    "HEALTH_CHECK": LegacyCommand("system:health", result_of=lambda d: {
        **d, "uptime": d.get("uptime_s")}),
    "GET_AGENTS": LegacyCommand("agent:list", result_of=_agents_by_id),
    "SPAWN_AGENT": LegacyCommand("agent:spawn"),
    "PUBLISH": LegacyCommand("message:publish"),
    "SUBSCRIBE": LegacyCommand("message:subscribe"),
    "SET_AGENT_KV": LegacyCommand("state:set", _kv_set_data, lambda d: {**d, "status": "set"}),
    "GET_AGENT_KV": LegacyCommand("state:get", lambda p: {"key": p.get("key")},
                                  lambda d: {"key": d.get("key"), "value": d.get("value"),
                                             "found": d.get("found")}),
    "COMPLETION": LegacyCommand("completion:async", _completion_data),
    "SHUTDOWN": LegacyCommand("system:shutdown"),
}


def is_command_line(line: bytes) -> bool:
    """Cheap first look: only lines naming a command are decoded here (others go straight to
    the router, which decodes them once)."""
    return b'"command"' in line


def command_request(request: dict) -> tuple[str, str, bytes] | bytes:
    """(command, correlation id, the event request line), or the legacy error line to send.
    `request` is a decoded line with a `command` and no `event`."""
    command = request.get("command")
    parameters = request.get("parameters", {})
    if not isinstance(command, str):
        return legacy_error(None, INVALID_REQUEST, "command must be a string such as "
                            "\"GET_AGENTS\"", {"commands": sorted(COMMANDS)})
    known = COMMANDS.get(command.upper())
    if known is None:
        return legacy_error(command, UNKNOWN_EVENT, f"unknown command {command}; known: "
                            f"{', '.join(sorted(COMMANDS))}", {"commands": sorted(COMMANDS)})
    if parameters is None:
        parameters = {}
    if not isinstance(parameters, dict):
        return legacy_error(command, INVALID_REQUEST,
                            f"parameters must be an object, not {type(parameters).__name__}")
    cid = f"legacy-{next(_ids)}"
    line = _dumps({"event": known.event, "data": known.data_of(parameters),
                   "correlation_id": cid}, option=_APPEND_NEWLINE)
    return command, cid, line


def legacy_reply(command: str, reply: dict) -> bytes:
    """The event reply `reply` to `command`, in the legacy shape."""
    if "error" in reply:
        error = reply["error"]
        return legacy_error(command, error.get("code"), error.get("message"),
                            error.get("details"))
    result = COMMANDS[command.upper()].result_of(reply.get("data") or {})
    return _dumps({"status": "success", "command": command, "result": result,
                   "metadata": {"timestamp": reply.get("timestamp"),
                                "event": reply.get("event")}},
                  option=_APPEND_NEWLINE, default=str)


def legacy_error(command: str | None, code: str, message: str, details=None) -> bytes:
    error = {"code": code, "message": message}
    if details is not None:
        error["details"] = details
    return _dumps({"status": "error", "command": command, "error": error},
                  option=_APPEND_NEWLINE, default=str)
