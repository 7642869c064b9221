"""The Binance trade feed against a local fake combined-stream server (no internet)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from decimal import Decimal

import pytest

from tradegraph.marketdata.feeds.base import Backoff, FeedGap, FeedSettings, SymbolSpec
from tradegraph.marketdata.feeds.binance import BinanceTradeFeed, parse_binance_trade
from tradegraph.marketdata.feeds.fakes import FakeBinanceServer
from tradegraph.marketdata.ticks import Tick

BTC = SymbolSpec("BTCUSDT", "BTCUSD", price_decimals=2, qty_decimals=8)
ETH = SymbolSpec("ETHUSDT", "ETHUSD", price_decimals=2, qty_decimals=4)
FAST = FeedSettings(
    backoff=Backoff(base_delay=0.01, max_delay=0.05), idle_timeout=5.0, start_timeout=3.0
)


@pytest.fixture
async def fake() -> AsyncIterator[FakeBinanceServer]:
    async with FakeBinanceServer({"BTCUSDT": "43000.00", "ETHUSDT": "2300.00"}) as server:
        yield server


@pytest.fixture
async def feed(fake: FakeBinanceServer) -> AsyncIterator[BinanceTradeFeed]:
    gaps: list[FeedGap] = []
    feed = BinanceTradeFeed([BTC, ETH], base_url=fake.url, settings=FAST, on_gap=gaps.append)
    feed.seen_gaps = gaps  # type: ignore[attr-defined]
    await feed.start()
    await fake.wait_until(lambda: fake.subscribers("BTCUSDT") == 1)
    yield feed
    await feed.stop()


async def take(feed: BinanceTradeFeed, n: int) -> list[Tick | FeedGap]:
    """The next ``n`` items (ticks and gap markers) or fail after 5 s."""
    stream = feed.stream()

    async def collect() -> list[Tick | FeedGap]:
        return [await anext(stream) for _ in range(n)]

    return await asyncio.wait_for(collect(), 5)


def test_parse_is_exact_and_rounds_half_even() -> None:
    data = {
        "e": "trade",
        "E": 1_700_000_000_999,
        "s": "BTCUSDT",
        "t": 12345,
        "p": "43000.01000000",
        "q": "0.00012000",
        "T": 1_700_000_000_123,
        "m": True,
    }
    tick, trade_id = parse_binance_trade(data, BTC)
    assert trade_id == 12345
    assert tick == Tick(
        symbol="BTCUSD", price=4300001, size=12000, ts=1_700_000_000_123, source="binance"
    )
    # More venue digits than the symbol keeps: half-even, never float noise.
    assert parse_binance_trade({**data, "p": "1.00500000"}, BTC)[0].price == 100
    assert parse_binance_trade({**data, "p": "1.01500000"}, BTC)[0].price == 102
    assert parse_binance_trade({**data, "q": "0.123456785"}, BTC)[0].size == 12345678
    with pytest.raises(ValueError):
        parse_binance_trade({**data, "p": 43000.01}, BTC)  # a float is already lossy


async def test_trades_arrive_mapped_and_exact(
    fake: FakeBinanceServer, feed: BinanceTradeFeed
) -> None:
    assert fake.requested_streams == [("btcusdt@trade", "ethusdt@trade")]
    assert feed.connected
    btc_id = await fake.trade("BTCUSDT", "43000.01", "0.5", time_ms=1_700_000_000_123)
    await fake.trade("ETHUSDT", Decimal("2300.5"), "1.2345", time_ms=1_700_000_000_200)
    items = await take(feed, 2)
    assert items == [
        Tick("BTCUSD", 4300001, 50_000_000, 1_700_000_000_123, "binance"),
        Tick("ETHUSD", 230050, 12345, 1_700_000_000_200, "binance"),
    ]
    assert feed.last_trade_id("btcusdt") == btc_id
    assert feed.messages == 2 and feed.ticks == 2 and feed.gaps == 0


async def test_skipped_trade_id_is_a_counted_visible_gap(
    fake: FakeBinanceServer, feed: BinanceTradeFeed
) -> None:
    first = await fake.trade("BTCUSDT", time_ms=1000)
    await fake.trade("ETHUSDT", time_ms=1500)  # other symbols keep their own sequence
    await fake.trade("BTCUSDT", time_ms=2000)
    fake.skip_ids("BTCUSDT", 3)
    await fake.trade("BTCUSDT", time_ms=3000)
    items = await take(feed, 5)
    gap = FeedGap(
        source="binance", symbol="BTCUSD", kind="sequence", missing=3, last_ts=2000, next_ts=3000
    )
    assert [type(i).__name__ for i in items] == ["Tick", "Tick", "Tick", "FeedGap", "Tick"]
    assert items[3] == gap
    assert feed.gaps == 1 and feed.last_gap == gap
    assert feed.seen_gaps == [gap]  # type: ignore[attr-defined]
    assert feed.last_trade_id("BTCUSDT") == first + 5


async def test_malformed_frames_are_counted_not_fatal(
    fake: FakeBinanceServer, feed: BinanceTradeFeed
) -> None:
    bad = [
        "not json",
        "[1, 2]",
        b"\xff\xfe",
        '{"stream": "btcusdt@trade"}',
        '{"stream": "btcusdt@trade", "data": {"e": "trade", "s": "BTCUSDT", "t": "7"}}',
        '{"stream": "btcusdt@trade", "data": {"e": "trade", "s": "BTCUSDT", "t": 7,'
        ' "p": "abc", "q": "1", "T": 1}}',
        '{"stream": "dogeusdt@trade", "data": {"e": "trade", "s": "DOGEUSDT", "t": 7,'
        ' "p": "1", "q": "1", "T": 1}}',
    ]
    for frame in bad:
        await fake.send_raw(frame)
    await fake.trade("BTCUSDT", "43000.00", "1", time_ms=5)
    [tick] = await take(feed, 1)
    assert tick == Tick("BTCUSD", 4300000, 100_000_000, 5, "binance")
    assert feed.parse_errors == len(bad)
    assert feed.connects == 1 and feed.connected


async def test_reconnects_after_a_drop_and_reports_the_missed_trades(
    fake: FakeBinanceServer, feed: BinanceTradeFeed
) -> None:
    await fake.trade("BTCUSDT", time_ms=1)
    await take(feed, 1)
    assert fake.drop() == 1
    await fake.trade("BTCUSDT")  # printed while we are away: nobody receives it
    await fake.wait_until(lambda: fake.subscribers("BTCUSDT") == 1)
    await fake.trade("BTCUSDT", time_ms=9)
    gap, tick = await take(feed, 2)
    assert isinstance(gap, FeedGap) and gap.missing == 1 and gap.after_reconnect
    assert isinstance(tick, Tick) and tick.ts == 9
    assert feed.reconnects == 1 and fake.connections_opened == 2
    assert fake.requested_streams[0] == fake.requested_streams[1]


async def test_idle_connection_times_out_and_reconnects(fake: FakeBinanceServer) -> None:
    settings = FeedSettings(backoff=Backoff(0.01, 0.05), idle_timeout=0.5, start_timeout=3)
    feed = BinanceTradeFeed([BTC], base_url=fake.url, settings=settings)
    await feed.start()
    try:
        await fake.wait_until(lambda: fake.subscribers("BTCUSDT") == 1)
        fake.silence()  # socket stays open, nothing arrives any more
        await fake.wait_until(lambda: fake.connections_opened == 2)
        await fake.wait_until(lambda: fake.subscribers("BTCUSDT") == 1)
        await fake.trade("BTCUSDT", time_ms=42)
        [tick] = await take(feed, 1)
        assert isinstance(tick, Tick) and tick.ts == 42
        assert feed.idle_timeouts == 1 and feed.reconnects == 1
    finally:
        await feed.stop()


async def test_stop_ends_iteration_and_leaves_no_tasks() -> None:
    before = asyncio.all_tasks()
    async with FakeBinanceServer({"BTCUSDT": "1.00"}, interval=0.01) as fake:
        feed = BinanceTradeFeed([BTC], base_url=fake.url, settings=FAST)
        await feed.start()
        received = []
        async for tick in feed:
            received.append(tick)
            if len(received) == 3:
                await feed.stop()
        # iteration ended by itself after stop (remaining buffered ticks drained)
        assert len(received) >= 3
        assert not feed.connected
        await feed.stop()  # idempotent
        assert [t for t in asyncio.all_tasks() if t.get_name().startswith("feed:")] == []
    assert asyncio.all_tasks() == before


async def test_stop_interrupts_a_long_backoff() -> None:
    async with FakeBinanceServer() as fake:
        url = fake.url
    # the server is gone: every attempt is refused and the next wait is 60 s
    settings = FeedSettings(backoff=Backoff(60.0, 60.0), start_timeout=0.2)
    feed = BinanceTradeFeed([BTC], base_url=url, settings=settings)
    await feed.start()  # returns after start_timeout, still retrying in the background
    assert not feed.connected and feed.connect_failures == 1
    started = time.monotonic()
    await asyncio.wait_for(feed.stop(), 2)
    assert time.monotonic() - started < 1
    assert [item async for item in feed.stream()] == []


async def test_external_stop_event_ends_the_feed(fake: FakeBinanceServer) -> None:
    stop = asyncio.Event()
    feed = BinanceTradeFeed([BTC], base_url=fake.url, settings=FAST, stop_event=stop)
    await feed.start()
    await fake.trade("BTCUSDT")
    stop.set()
    items = await asyncio.wait_for(_drain(feed), 5)
    assert len(items) <= 1
    await fake.wait_until(lambda: fake.active_connections == 0)
    await feed.stop()


async def _drain(feed: BinanceTradeFeed) -> list[Tick]:
    return [tick async for tick in feed]
