"""AsyncClient: EventClient plus one helper per everyday task.

    async with AsyncClient() as client:
        print((await client.health())["status"])
        answer = await client.create_completion("Explain quantum computing")
        await client.set_state("last_answer", answer.text)

The helpers live with their subject (completion.py, agents.py, topics.py, state.py,
conversations.py) as mixins over EventClient's emit() and events(); the class below only puts
them together. `SyncClient` (sync_client.py) is generated from this class, so a helper added
here is at once available to scripts without asyncio.
"""
from __future__ import annotations

from .agents import AgentHelpers
from .completion import CompletionHelpers
from .conversations import ConversationHelpers
from .event_client import EventClient
from .state import StateHelpers
from .topics import TopicHelpers


class AsyncClient(CompletionHelpers, AgentHelpers, TopicHelpers, StateHelpers,
                  ConversationHelpers, EventClient):
    """An EventClient with helpers; every helper raises the daemon's errors as KSIError."""

    async def health(self) -> dict:
        """{status: "healthy" or "degraded", uptime_s, version, pid, plugins: {active, failed,
        degraded}, connections, failed_plugins, degraded} (PROTOCOL.md, system:health)."""
        return await self.emit("system:health")


def helper_names() -> list[str]:
    """The public methods AsyncClient adds to EventClient: what SyncClient mirrors."""
    return sorted(name for name in dir(AsyncClient)
                  if not name.startswith("_") and callable(getattr(AsyncClient, name))
                  and not hasattr(EventClient, name))
