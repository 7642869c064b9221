"""Random trades through the live candle pipeline vs an independent computation.

Ticks (bursts over twelve days, some arriving late within the grace window) go through
``MarketDataService.ingest``/``step`` with a fake clock, across two restarts (a quick one
inside the same hours, and one after a two-day outage). At the end, for every
resolution, the stored bars plus the forming one must equal OHLCV computed straight from
the raw trades with calendar arithmetic (``datetime``, not ``Resolution``). Runs on both
legs (SQLite and PostgreSQL).
"""

from __future__ import annotations

import random
from collections import defaultdict
from datetime import UTC, datetime, timedelta

from tradegraph.db import Database
from tradegraph.marketdata.candles import ALL_RESOLUTIONS, Resolution
from tradegraph.marketdata.service import MarketDataService
from tradegraph.marketdata.ticks import Tick
from tradegraph.pubsub import PubSub

SYMBOL = "BTC-USD"  # a CLOB instrument: ingest() does not send mark prices for it
T0 = int(datetime(2024, 6, 1, 21, 30, tzinfo=UTC).timestamp() * 1000)  # a Saturday
MINUTES = {"M1": 1, "M5": 5, "M15": 15, "M30": 30, "H1": 60, "H4": 240}


def bucket(name: str, ts_ms: int) -> int:
    """Open time of the bar holding ``ts_ms``, from the calendar (independent of candles.py)."""
    dt = datetime.fromtimestamp(ts_ms / 1000, UTC)
    midnight = dt.replace(hour=0, minute=0, second=0, microsecond=0)
    if name == "W1":
        start = midnight - timedelta(days=dt.weekday())  # Monday 00:00 UTC
    elif name == "D1":
        start = midnight
    else:
        minute_of_day = dt.hour * 60 + dt.minute
        start = midnight + timedelta(minutes=minute_of_day - minute_of_day % MINUTES[name])
    return int(start.timestamp() * 1000)


def expected_bars(ticks: list[Tick], name: str) -> list[tuple[int, ...]]:
    groups: dict[int, list[tuple[int, int, Tick]]] = defaultdict(list)
    for arrival, t in enumerate(ticks):
        groups[bucket(name, t.ts)].append((t.ts, arrival, t))
    out = []
    for start in sorted(groups):
        items = [t for _, _, t in sorted(groups[start], key=lambda x: (x[0], x[1]))]
        prices = [t.price for t in items]
        out.append(
            (
                start,
                items[0].price,
                max(prices),
                min(prices),
                items[-1].price,
                sum(t.size for t in items),
                len(items),
            )
        )
    return out


def random_ticks(rng: random.Random) -> tuple[list[list[Tick]], int, int]:
    """Bursts of ticks; returns (bursts, index of a quick restart, index after an outage)."""
    bursts: list[list[Tick]] = []
    start = T0
    price = 6_500_000
    for b in range(36):
        gap = 2 * 86_400_000 if b == 24 else rng.randint(6, 600) * 60_000
        start += gap
        ts = start + rng.randint(0, 59_999)
        burst = []
        latest = ts
        for _ in range(rng.randint(20, 90)):
            price = max(1, price + rng.randint(-400, 400))
            if rng.random() < 0.1:
                # Just into the next minute, then a straggler from the minute before: it
                # arrives after that bar closed, so it must correct it (and its parents).
                edge = ts - ts % 60_000 + 60_000
                ts = latest = edge + rng.randint(0, 300)
                burst.append(Tick(SYMBOL, price, rng.randint(1, 5_000), ts, "test"))
                late = edge - rng.randint(1, 1_400)
                burst.append(Tick(SYMBOL, price + 7, rng.randint(1, 5_000), late, "test"))
                continue
            ts += rng.randint(0, 25_000)
            latest = max(latest, ts)
            # one tick in eight arrives late, within the 2 s grace window
            when = latest - rng.randint(0, 1_900) if rng.random() < 0.125 else latest
            burst.append(Tick(SYMBOL, price, rng.randint(1, 5_000), when, "test"))
        bursts.append(burst)
        start = latest
    return bursts, 11, 24


async def check(md: MarketDataService, fed: list[Tick]) -> None:
    """Stored bars + the forming bar == the independent computation, every resolution."""
    for res in ALL_RESOLUTIONS:
        stored = await md.store.bars(SYMBOL, res, limit=1_000_000)
        actual = [(b.ts, b.open, b.high, b.low, b.close, b.volume, b.trades) for b in stored]
        forming = md.forming(SYMBOL, res)
        if forming is not None:
            assert not actual or actual[-1][0] < forming.ts, res.name
            f = forming
            actual.append((f.ts, f.open, f.high, f.low, f.close, f.volume, f.trades))
        assert actual == expected_bars(fed, res.name), res.name


async def new_service(settings, pubsub: PubSub) -> MarketDataService:
    md = MarketDataService(settings, Database(settings.database_url), pubsub, None)
    await md.load_instruments()
    return md


async def test_random_trades_match_an_independent_computation(settings):
    rng = random.Random(20240601)
    bursts, quick, outage = random_ticks(rng)
    pubsub = PubSub("memory://")
    await pubsub.connect()
    services: list[MarketDataService] = []
    try:
        md = await new_service(settings, pubsub)
        services.append(md)
        await md.recover(T0)
        now = T0
        fed: list[Tick] = []
        for b, burst in enumerate(bursts):
            if b in (quick, outage):
                # The process stops once every minute bar of the last burst closed...
                now = max(now, max(t.ts for t in bursts[b - 1])) + 61_500
                md.clock = lambda now=now: now / 1000
                await md.step(now, force=True)
                assert md.aggregator.rejected == 0
                if b == outage:  # ...and comes back two days later, or at once.
                    now = min(t.ts for t in burst) - 30_000
                md = await new_service(settings, pubsub)
                services.append(md)
                md.clock = lambda now=now: now / 1000
                await md.recover(now)
                await check(md, fed)  # stored + forming after the restart, from the DB
            for i, tick in enumerate(burst):
                now = max(now, tick.ts)
                md.clock = lambda now=now: now / 1000
                md.ingest(tick)
                fed.append(tick)
                if i % 5 == 4:
                    await md.step(now)
        await md.step(now, force=True)
        assert md.aggregator.rejected == 0
        assert sum(s.aggregator.corrections for s in services) > 0  # late ticks were there

        await check(md, fed)
        for res in ALL_RESOLUTIONS:
            assert md.forming(SYMBOL, res) is not None  # the last burst's bars are forming

        # The query path agrees with the store: countBack over everything, forming last.
        series = await md.series(SYMBOL, Resolution.H1, count_back=5_000)
        assert [b.ts for b in series.bars()] == [b[0] for b in expected_bars(fed, "H1")]
        assert series.forming is not None
    finally:
        for s in services:
            await s.db.dispose()
        await pubsub.disconnect()
