"""Connectivity and platform fields: ``serverTime``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from datetime import UTC, datetime

import strawberry

from tradegraph.graphql.context import Info
from tradegraph.graphql.streams import track


async def _ticks() -> AsyncGenerator[datetime, None]:
    while True:
        now = datetime.now(UTC)
        yield now.replace(microsecond=(now.microsecond // 1000) * 1000)
        # Sleep to the next whole second so every client ticks in step.
        await asyncio.sleep(1 - datetime.now(UTC).microsecond / 1_000_000)


@strawberry.type
class SystemQuery:
    @strawberry.field(description="The server's current time (UTC).")
    def server_time(self) -> datetime:
        return datetime.now(UTC)


@strawberry.type
class SystemSubscription:
    @strawberry.subscription(
        description="The server time once a second: a connectivity check for real-time UIs."
    )
    async def server_time(self, info: Info) -> AsyncGenerator[datetime, None]:
        async for tick in track(info, _ticks()):
            yield tick
