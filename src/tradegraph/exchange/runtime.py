"""Running the sequencer: its task, the event publisher and the ticker loop.

Embedded (the default): the sequencer runs inside the API process behind an in-process
bus. Remote: ``tradegraph engine`` runs it behind Redis Streams and a leader lock, and
API workers only send commands.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select

from tradegraph.bus import InProcessBus
from tradegraph.db import Database
from tradegraph.errors import DomainError
from tradegraph.exchange import models as m
from tradegraph.exchange.sequencer import Sequencer
from tradegraph.exchange.store import ExchangeStore
from tradegraph.exchange.ticker import TickerBoard
from tradegraph.metrics import Metrics
from tradegraph.pubsub import PubSub

log = logging.getLogger("tradegraph.exchange")

TICKER_INTERVAL = 0.1  # at most 10 ticker updates a second per symbol
MAX_PENDING_BATCHES = 10_000


class EnginePublisher:
    """Publishes the sequencer's events in order, off the matching loop.

    Events are queued per batch and published by one task, so a slow broker delays
    events but never matching; if the queue overflows the oldest batch is dropped and
    subscribers see the sequence gap (and resubscribe).
    """

    def __init__(self, pubsub: PubSub, board: TickerBoard) -> None:
        self.pubsub = pubsub
        self.board = board
        self.queue: asyncio.Queue[list[tuple[str, dict[str, Any]]]] = asyncio.Queue(
            MAX_PENDING_BATCHES
        )
        self.touched: set[str] = set()
        self.dropped_batches = 0
        self.publish_errors = 0

    def enqueue(self, events: list[tuple[str, dict[str, Any]]]) -> None:
        if self.queue.full():
            self.queue.get_nowait()
            self.dropped_batches += 1
        self.queue.put_nowait(events)
        now = time.time()
        for topic, msg in events:
            if topic.startswith("trades:"):
                d = msg["data"]
                self.board.get(d["symbol"]).add_trade(now, d["price"], d["qty"])
                self.touched.add(d["symbol"])
            elif topic.startswith("book:"):
                self.touched.add(topic[5:])

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set() or not self.queue.empty():
            try:
                events = await asyncio.wait_for(self.queue.get(), 0.5)
            except TimeoutError:
                continue
            try:
                await self.pubsub.publish_many(events)  # one round trip per batch
            except Exception:
                self.publish_errors += len(events)


class ExchangeRuntime:
    """Owns the embedded sequencer and its helper tasks."""

    def __init__(
        self,
        db: Database,
        pubsub: PubSub,
        bus: Any,
        *,
        demo_faucet: bool,
        embedded: bool,
        store: ExchangeStore | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.db = db
        self.pubsub = pubsub
        self.bus = bus
        self.embedded = embedded
        self.board = TickerBoard()
        self.publisher = EnginePublisher(pubsub, self.board)
        self.sequencer = Sequencer(
            store or ExchangeStore(db),
            bus,
            self.publisher.enqueue,
            demo_faucet=demo_faucet,
            log_commands=not isinstance(bus, InProcessBus),
            metrics=metrics,
        )
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        await self.bus.start()
        if not self.embedded:
            return
        await self._load_ticker_window()
        self._stop.clear()
        self._tasks = [
            asyncio.create_task(self.sequencer.run(self._stop), name="sequencer"),
            asyncio.create_task(self.publisher.run(self._stop), name="engine-publisher"),
            asyncio.create_task(self._ticker_loop(), name="ticker"),
        ]
        ready = asyncio.create_task(self.sequencer.ready.wait())
        done, _ = await asyncio.wait(
            [ready, self._tasks[0]], timeout=30, return_when=asyncio.FIRST_COMPLETED
        )
        if ready not in done:
            ready.cancel()
            if self._tasks[0].done() and self._tasks[0].exception():
                raise RuntimeError("the sequencer failed to start") from self._tasks[0].exception()
            raise RuntimeError("the sequencer did not become ready in 30 s")

    @property
    def failed(self) -> BaseException | None:
        """The sequencer task's exception, if it died."""
        task = self._tasks[0] if self._tasks else None
        if task is not None and task.done() and not task.cancelled():
            return task.exception()
        return None

    async def stop(self) -> None:
        self._stop.set()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(task, 5)
        self._tasks = []
        await self.bus.close()

    async def _load_ticker_window(self) -> None:
        since = datetime.now(UTC) - timedelta(hours=24)
        async with self.db.session() as session:
            rows = await session.execute(
                select(m.Trade.symbol, m.Trade.created_at, m.Trade.price, m.Trade.qty)
                .where(m.Trade.created_at >= since)
                .order_by(m.Trade.id)
            )
            for symbol, at, price, qty in rows:
                self.board.get(symbol).add_trade(at.timestamp(), price, qty)
        for ticker in self.board.symbols.values():
            ticker.dirty = False

    async def _ticker_loop(self) -> None:
        engine_of = self.sequencer
        while not self._stop.is_set():
            await asyncio.sleep(TICKER_INTERVAL)
            touched, self.publisher.touched = self.publisher.touched, set()
            for symbol in touched:
                try:
                    bid, ask = engine_of.engine.best_bid_ask(symbol)
                except DomainError:  # the symbol vanished during a rebuild
                    log.debug("no book for %s", symbol)
                    continue
                self.board.on_top(symbol, bid, ask)
            now = time.time()
            for snap in self.board.due(now, datetime.now(UTC).isoformat()):
                topic = f"ticker:{snap['symbol']}"
                with contextlib.suppress(Exception):
                    await self.pubsub.publish(
                        topic, {"topic": topic, "type": "TICKER", "data": snap}
                    )
