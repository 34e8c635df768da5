#!/usr/bin/env python3
"""HEALTH_CHECK command handler - a handler without get_help, registered by its class name."""

import asyncio
from typing import Any, Dict

from ..command_registry import CommandHandler
from ..protocols import SocketResponse


class HealthCheckHandler(CommandHandler):
    """Reports that the daemon is up, with its managers"""

    command_name = "HEALTH_CHECK"

    async def handle(self, parameters: Dict[str, Any], writer: asyncio.StreamWriter,
                     full_command: Dict[str, Any]) -> Any:
        return SocketResponse.success("HEALTH_CHECK", {"status": "healthy", "managers": {}})
