"""Helpers for subscription resolvers."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from typing import TypeVar

from tradegraph.graphql.context import Info

T = TypeVar("T")


async def track(info: Info, stream: AsyncIterator[T]) -> AsyncGenerator[T, None]:
    """Count the subscription in the active-subscriptions gauge while it streams."""
    gauge = info.context.services.metrics.active_subscriptions
    gauge.inc()
    try:
        async for item in stream:
            yield item
    finally:
        gauge.dec()
        close = getattr(stream, "aclose", None)
        if close is not None:
            await close()
