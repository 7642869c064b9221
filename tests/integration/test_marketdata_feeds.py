"""Sources wired into the running service: the simulator, Binance and Deriv (local fakes),
SIM mark prices, and a worker that follows another worker's forming bars."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.conftest import make_settings
from tradegraph.db import Database
from tradegraph.marketdata.candles import Resolution
from tradegraph.marketdata.feeds.fakes import FakeBinanceServer, FakeDerivServer
from tradegraph.marketdata.service import MarketDataService
from tradegraph.marketdata.ticks import Tick
from tradegraph.pubsub import PubSub
from tradegraph.services import Services


async def eventually(check, within: float = 5.0):
    deadline = time.monotonic() + within
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


async def test_simulator_feeds_and_marks(tmp_path, leg):
    binance = FakeBinanceServer({"BTCUSDT": "65000.00"})
    deriv = FakeDerivServer({"frxEURUSD": 5}, start_quote="1.08")
    await binance.start()
    await deriv.start()
    settings = make_settings(
        tmp_path,
        leg,
        market_simulator=True,
        market_mark_interval_seconds=0.1,
        market_binance_symbols="BTCUSDT:BTCUSD, ETHBTC:NOPE",
        market_binance_url=binance.base_url,
        market_deriv_symbols="frxEURUSD:EURUSD",
        market_deriv_url=deriv.url,
    )
    services = Services(settings)
    await services.start()
    md = services.marketdata
    try:
        # The simulator covers the SIM instruments no real feed does.
        assert md.simulator is not None
        assert "BTCUSD" not in md.simulator.symbols and "EURUSD" not in md.simulator.symbols
        assert {"XAUUSD", "US30", "NAS100", "GBPUSD"} <= set(md.simulator.symbols)

        await binance.wait_until(lambda: binance.subscribers("BTCUSDT") == 1)
        await deriv.wait_until(lambda: deriv.subscribers("frxEURUSD") == 1)
        await binance.trade("BTCUSDT", "65000.10", "0.5")
        await deriv.tick("frxEURUSD", "1.09123")

        async def fed() -> bool:
            btc, eur = md.last_tick("BTCUSD"), md.last_tick("EURUSD")
            return bool(btc and eur and btc.price == 6_500_010 and eur.price == 109_123)

        await eventually(fed)
        series = await md.series("BTCUSD", Resolution.M1, count_back=1)
        (bar,) = series.bars()
        assert (bar.close, bar.volume) == (6_500_010, 5_000)  # 0.5 BTC at 4 decimals

        async def marked() -> dict[str, str | None]:
            infos = {i.symbol: i for i in await services.exchange.instruments()}
            marks = {s: str(infos[s].price(infos[s].row.last_price)) for s in infos}
            ok = marks["BTCUSD"] == "65000.10" and marks["EURUSD"] == "1.09123"
            return marks if ok and marks["XAUUSD"] != "None" else {}

        marks = await eventually(marked)
        assert marks["BTC-USD"] == "None"  # CLOB instruments are not marked from feeds
        counters = md.counters()
        assert counters["sim_ticks"] > 0 and counters["marks_sent"] >= 3
        assert counters["feed_binance_ticks"] == 1 and counters["feed_deriv_ticks"] >= 1
        assert counters["mark_errors"] == 0
        metrics = services.metrics.render().decode()
        assert 'tradegraph_marketdata_events_total{kind="sim_ticks"}' in metrics
    finally:
        await services.stop()
        await binance.stop()
        await deriv.stop()


async def test_a_follower_serves_the_producers_forming_bars(settings):
    pubsub = PubSub("memory://")
    await pubsub.connect()
    producer = MarketDataService(
        settings, Database(settings.database_url), pubsub, None, produce=True
    )
    follower = MarketDataService(
        settings, Database(settings.database_url), pubsub, None, produce=False
    )
    now = int(time.time() * 1000)
    try:
        await producer.load_instruments()
        await producer.recover(now)
        await follower.start()
        assert not follower.producing
        topics = len(follower.meta_by_symbol) * len(Resolution)
        await eventually(lambda: _true(pubsub.active_subscriptions >= topics))

        producer.ingest(Tick("BTC-USD", 5_000_000, 10, now - 500, "t"))
        await producer.step(now, force=True)
        expected = producer.forming("BTC-USD", Resolution.H1)
        assert expected is not None
        await eventually(lambda: _true(follower.forming("BTC-USD", Resolution.H1) == expected))
        series = await follower.series("BTC-USD", Resolution.M1)
        assert series.forming == producer.forming("BTC-USD", Resolution.M1)

        # The minute closes: the follower forgets it as forming; the bar is in the store.
        closing = Resolution.M1.bucket_end(now - 500) + 1_500
        await producer.step(closing, force=True)
        await eventually(lambda: _true(follower.forming("BTC-USD", Resolution.M1) is None))
        stored = await follower.store.bars("BTC-USD", Resolution.M1)
        assert [b.close for b in stored] == [5_000_000]
    finally:
        await follower.stop()
        await producer.db.dispose()
        await follower.db.dispose()
        await pubsub.disconnect()


async def _true(value: bool) -> bool:
    return value


async def test_remote_workers_elect_one_producer(tmp_path, leg):
    if leg.name != "pg":
        pytest.skip("the leader lock of remote workers is a PostgreSQL advisory lock")
    settings = make_settings(tmp_path, leg, engine_mode="remote")
    pubsub = PubSub("memory://")
    await pubsub.connect()
    workers = [
        MarketDataService(settings, Database(settings.database_url), pubsub, None) for _ in range(2)
    ]
    try:
        for w in workers:
            await w.start()
        await eventually(lambda: _true(sum(w.producing for w in workers) == 1), within=15)
        await asyncio.sleep(0.3)
        assert sum(w.producing for w in workers) == 1  # and it stays one
        leader = next(w for w in workers if w.producing)
        other = next(w for w in workers if not w.producing)
        await leader.stop()
        await eventually(lambda: _true(other.producing), within=15)
        assert other.counters()["producer_starts"] == 1
    finally:
        for w in workers:
            await w.stop()
            await w.db.dispose()
        await pubsub.disconnect()
