"""The retained messages, per topic, in memory: the last N of each, optionally not older than T.

The database holds the same set (see store.py); memory answers history and replay without a
query. The number of topics is bounded too: past `max_topics` the topic published to least
recently is forgotten, so a client inventing topic names cannot grow the daemon without limit.
"""
from __future__ import annotations

import time
from collections import OrderedDict, deque
from typing import Callable, Iterator

Retained = tuple[int, dict]  # (seq, the message as pushed: message_id, topic, sender, content, ts)


class RetainedMessages:
    def __init__(self, per_topic: int, max_age_s: float | None, max_topics: int):
        self.per_topic, self.max_age_s, self.max_topics = per_topic, max_age_s, max_topics
        self._topics: OrderedDict[str, deque[Retained]] = OrderedDict()

    def add(self, seq: int, message: dict) -> tuple[int, list[str]]:
        """Keep `message`; return (oldest seq still kept on its topic, topics forgotten)."""
        topic = message["topic"]
        kept = self._topics.get(topic)
        if kept is None:
            kept = self._topics[topic] = deque(maxlen=self.per_topic)
        else:
            self._topics.move_to_end(topic)
        kept.append((seq, message))
        forgotten = []
        while len(self._topics) > self.max_topics:
            forgotten.append(self._topics.popitem(last=False)[0])
        return kept[0][0], forgotten

    def latest(self, topic: str, limit: int) -> list[dict]:
        self.drop_expired()
        kept = self._topics.get(topic, ())
        return [message for _seq, message in list(kept)[-limit:]]

    def after(self, seq: int, matches: Callable[[str], bool]) -> Iterator[Retained]:
        """Messages newer than `seq` on topics `matches` accepts, oldest first."""
        self.drop_expired()
        found = [entry for topic, kept in self._topics.items() if matches(topic)
                 for entry in kept if entry[0] > seq]
        found.sort(key=lambda entry: entry[0])
        return iter(found)

    def drop_expired(self) -> float | None:
        """Forget messages past the maximum age; return the cut-off used (None: no age limit)."""
        if self.max_age_s is None:
            return None
        cutoff = time.time() - self.max_age_s
        for topic in list(self._topics):
            kept = self._topics[topic]
            while kept and kept[0][1]["timestamp"] < cutoff:
                kept.popleft()
            if not kept:
                del self._topics[topic]
        return cutoff

    def oldest_kept(self) -> dict[str, int]:
        return {topic: kept[0][0] for topic, kept in self._topics.items() if kept}

    def __len__(self) -> int:
        return sum(len(kept) for kept in self._topics.values())
