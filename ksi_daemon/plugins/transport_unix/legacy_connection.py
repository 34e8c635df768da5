"""A control.sock connection: the legacy command protocol beside the event protocol.

A `{"command": ...}` line (legacy_commands.py) is handed to the router as an event request
with a correlation id this connection remembers; the reply carrying that id is rewritten in
the legacy shape as it is written. Every other line is the event protocol, untouched (the
guide sends both kinds to the daemon). Connections of other sockets are plain `Connection`s
and pay nothing for this.
"""
from __future__ import annotations

import orjson

from .connection import Connection
from .legacy_commands import command_request, is_command_line, legacy_reply

_REPLY_START = b'{"type":"reply"'  # how protocol.encode_reply/encode_error lines begin


class LegacyCommandConnection(Connection):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.commands: dict[str, str] = {}  # correlation id -> the command awaiting its reply
        self.route_line = self._route_command_or_event

    def _route_command_or_event(self, line: bytes, conn) -> None:
        if is_command_line(line):
            try:
                request = orjson.loads(line)
            except orjson.JSONDecodeError:
                request = None  # the router answers invalid_json
            if request.__class__ is dict and "command" in request and "event" not in request:
                outcome = command_request(request)
                if outcome.__class__ is bytes:  # refused before any event: the legacy error
                    return self.send(outcome)
                command, cid, line = outcome
                self.commands[cid] = command
        self.router.handle_line(line, self)

    def batch_writer(self, batch: list):
        append = batch.append

        def write(line: bytes) -> None:
            append(self._as_legacy(line))
        return write

    def send(self, line: bytes) -> None:
        super().send(self._as_legacy(line))

    def _as_legacy(self, line: bytes) -> bytes:
        if not self.commands or not line.startswith(_REPLY_START):
            return line
        reply = orjson.loads(line)
        command = self.commands.pop(reply.get("correlation_id"), None)
        return line if command is None else legacy_reply(command, reply)
