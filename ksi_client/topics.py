"""The message-bus helpers of AsyncClient: publish to a topic, read the messages of topics.

    async with await client.subscribe_topic("room:*") as messages:
        await client.publish("room:lobby", {"text": "hello"})
        event = await messages.get(timeout=5)
        print(event.data["topic"], event.data["sender"], event.data["content"])

Messages arrive as `message:received` pushes on this connection; `subscribe_topic` returns an
EventStream of the ones whose topic matches its patterns, so several subscriptions on one client
each see their own. Closing that stream stops reading; `unsubscribe_topic` stops the daemon
sending (for every stream of this client that used those patterns).
"""
from __future__ import annotations

from typing import Any

from ._data import without_none
from .event_client import EVENTS_QUEUE_SIZE, Event, EventStream, compile_pattern

RECEIVED = "message:received"


class TopicHelpers:
    """Mixed into AsyncClient (an EventClient): uses its emit() and events()."""

    async def publish(self, topic: str, content: Any, *, sender: str | None = None) -> dict:
        """Send `content` (any JSON value) to the subscribers of `topic`, a concrete topic.
        Returns {message_id, delivered}: how many connections and agents were handed it."""
        return await self.emit("message:publish", without_none(
            topic=topic, content=content, sender=sender))

    async def subscribe_topic(self, *topics: str,
                              max_queue: int = EVENTS_QUEUE_SIZE) -> EventStream:
        """Subscribe this connection to topics or patterns (`*`, `room:*`, fnmatch) and return
        the stream of their messages; each event's data is {message_id, topic, sender,
        content, timestamp}."""
        if not topics or not all(isinstance(topic, str) and topic for topic in topics):
            raise ValueError("name at least one topic, e.g. subscribe_topic('room:lobby')")
        matchers = [compile_pattern(topic) for topic in topics]

        def for_these_topics(event: Event) -> bool:
            topic = event.data.get("topic") if isinstance(event.data, dict) else None
            return isinstance(topic, str) and any(matches(topic) for matches in matchers)

        # Listening before asking: a message may follow the reply in the same read.
        stream = self.events(RECEIVED, max_queue=max_queue, where=for_these_topics)
        try:
            await self.emit("message:subscribe", {"topics": list(topics)})
        except BaseException:
            await stream.aclose()
            raise
        return stream

    async def unsubscribe_topic(self, *topics: str) -> list[str]:
        """Stop receiving these topics (none named: all of them); returns the ones this
        connection was subscribed to and has now left."""
        data = {"topics": list(topics)} if topics else {}
        return (await self.emit("message:unsubscribe", data))["topics"]
