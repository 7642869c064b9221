"""Event envelopes for pub/sub topics: ``{topic, seq, ts, type, data}``.

``seq`` grows by exactly one per topic so a client can spot a dropped message. Producers
outside the sequencer (notifications, admin actions) number their topics here: with Redis
an ``INCR`` shared by every worker, in-process a counter.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

from redis.asyncio import Redis

from tradegraph.pubsub import PubSub


def envelope(topic: str, seq: int, type_: str, data: dict[str, Any]) -> dict[str, Any]:
    return {
        "topic": topic,
        "seq": seq,
        "ts": datetime.now(UTC).isoformat(),
        "type": type_,
        "data": data,
    }


class EventPublisher:
    """Numbers and publishes events for topics owned by API-side producers."""

    def __init__(self, pubsub: PubSub, redis: Redis | None, *, prefix: str) -> None:
        self._pubsub = pubsub
        self._redis = redis
        self._prefix = prefix
        self._local: defaultdict[str, int] = defaultdict(int)

    async def next_seq(self, topic: str) -> int:
        if self._redis is not None:
            return int(await self._redis.incr(f"{self._prefix}seq:{topic}"))
        self._local[topic] += 1
        return self._local[topic]

    async def publish(self, topic: str, type_: str, data: dict[str, Any]) -> dict[str, Any]:
        event = envelope(topic, await self.next_seq(topic), type_, data)
        await self._pubsub.publish(topic, event)
        return event
