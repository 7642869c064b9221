"""``tradegraph engine``: the production sequencer process.

Only the holder of the PostgreSQL leader lock runs the loop; it reads commands from Redis
Streams, fences every commit with the lock, and stops (to be restarted by its supervisor)
the moment it loses leadership. Any number of standby engines can wait for the lock.
"""

from __future__ import annotations

import asyncio
import logging

from tradegraph.bus import RedisStreamsBus
from tradegraph.config import Settings
from tradegraph.db import Database
from tradegraph.exchange.runtime import ExchangeRuntime
from tradegraph.exchange.store import ExchangeStore
from tradegraph.gctuning import tune_for_server
from tradegraph.jobs.leader import LeaderLock
from tradegraph.pubsub import PubSub

log = logging.getLogger("tradegraph.engine")


async def run_engine(settings: Settings, stop: asyncio.Event) -> None:
    """Wait for leadership, then run the sequencer until ``stop`` or leadership is lost."""
    if not settings.redis_url:
        raise RuntimeError("the engine needs TRADEGRAPH_REDIS_URL (commands come over Redis)")
    db = Database(settings.resolved_database_url, pool_size=4)
    pubsub = PubSub(settings.pubsub_url, prefix=f"{settings.redis_prefix}:")
    lock = LeaderLock(db, f"{settings.redis_prefix}:sequencer")
    await pubsub.connect()
    try:
        log.info("engine waiting for the leader lock")
        acquire = asyncio.ensure_future(lock.acquire(wait=True))
        stopper = asyncio.ensure_future(stop.wait())
        await asyncio.wait({acquire, stopper}, return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        if not acquire.done():
            acquire.cancel()
            return
        log.info("engine is the leader")
        bus = RedisStreamsBus.from_settings(settings, role="engine")
        runtime = ExchangeRuntime(
            db,
            pubsub,
            bus,
            demo_faucet=settings.demo_faucet,
            embedded=True,
            store=ExchangeStore(db, fence=lock.fence),
        )
        await runtime.start()
        if settings.gc_tuning:
            tune_for_server()  # after the rebuild: the books are the long-lived heap
        try:
            lost = asyncio.ensure_future(lock.lost.wait())
            stopper = asyncio.ensure_future(stop.wait())
            await asyncio.wait({lost, stopper}, return_when=asyncio.FIRST_COMPLETED)
            for waiter in (lost, stopper):
                waiter.cancel()
            if lock.lost.is_set():
                log.error("leadership lost: stopping the sequencer")
        finally:
            await runtime.stop()
    finally:
        await lock.release()
        await pubsub.disconnect()
        await db.dispose()
