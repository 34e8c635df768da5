#!/usr/bin/env python3
"""SET_NOTE / GET_NOTE command handlers - a note store, in the legacy registry style."""

import asyncio
from typing import Any, Dict

from ..command_registry import CommandHandler, command_handler
from ..protocols import SocketResponse


@command_handler("SET_NOTE", aliases=["PUT_NOTE"])
class SetNoteHandler(CommandHandler):
    """Stores a note under a key"""

    async def handle(self, parameters: Dict[str, Any], writer: asyncio.StreamWriter,
                     full_command: Dict[str, Any]) -> Any:
        if "key" not in parameters:
            return SocketResponse.error("SET_NOTE", "INVALID_PARAMETERS", "key is required")
        self.state_manager.set_shared_state(parameters["key"], parameters.get("text", ""))
        return SocketResponse.success("SET_NOTE", {"key": parameters["key"]})

    @classmethod
    def get_help(cls) -> Dict[str, Any]:
        return {
            "command": "SET_NOTE",
            "description": "Store a note under a key (replacing an older one)",
            "parameters": {
                "key": {"type": "string", "description": "where the note is kept",
                        "required": True},
                "text": {"type": "string", "description": "the note", "default": ""},
                "pinned": {"type": "boolean", "description": "keep it on top",
                           "optional": True},
            },
        }


@command_handler("GET_NOTE")
class GetNoteHandler(CommandHandler):
    """Reads the note stored under a key"""

    async def handle(self, parameters: Dict[str, Any], writer: asyncio.StreamWriter,
                     full_command: Dict[str, Any]) -> Any:
        text = self.state_manager.get_shared_state(parameters.get("key"))
        return SocketResponse.success("GET_NOTE", {"key": parameters.get("key"), "text": text})

    @classmethod
    def get_help(cls) -> Dict[str, Any]:
        return {"command": "GET_NOTE", "description": "Read a note",
                "parameters": {"key": {"type": "string", "required": True}}}
