"""The ``candles`` query, SIM instruments, their stats and marks, on both legs."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from decimal import Decimal

import numpy as np
from graphql import parse

from tests.helpers import gql
from tests.integration.test_exchange_api import deposit, place, trader
from tradegraph.graphql.marketdata import plan_candles
from tradegraph.graphql.schema import build_schema
from tradegraph.marketdata.candles import BarArrays, Resolution
from tradegraph.marketdata.service import MarketDataService
from tradegraph.marketdata.ticks import Tick

T0 = 1_717_200_000_000  # 2024-06-01 00:00 UTC
MIN = 60_000
Q = """query($s: String!, $r: Resolution!, $f: DateTime, $t: DateTime, $n: Int) {
  candles(symbol: $s, resolution: $r, from: $f, to: $t, countBack: $n) {
    time open high low close volume trades closed } }"""


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat()


def at(md: MarketDataService, ms: int) -> None:
    md.clock = lambda: ms / 1000


async def minutes_of_eurusd(md: MarketDataService) -> int:
    """One tick at second 5 of minutes 0..10 except 4 (an empty minute: no bar)."""
    now = T0 + 10 * MIN + 30_000
    at(md, now)
    for minute in range(11):
        if minute != 4:
            md.ingest(Tick("EURUSD", 108_500 + minute, 2, T0 + minute * MIN + 5_000, "t"))
    await md.step(now, force=True)
    return now


async def candles(client, **variables):
    body = await gql(client, Q, {"s": "EURUSD", "r": "M1", **variables})
    return body


def times(body) -> list[str]:
    return [c["time"] for c in body["data"]["candles"]]


async def test_range_rules_forming_bar_and_errors(services, client):
    md = services.marketdata
    await minutes_of_eurusd(md)
    m = [iso(T0 + i * MIN) for i in range(11)]

    # from inclusive, to exclusive
    body = await candles(client, f=m[0], t=m[3])
    assert times(body) == m[0:3]
    first = body["data"]["candles"][0]
    assert first == {
        "time": "2024-06-01T00:00:00+00:00",
        "open": "1.08500",
        "high": "1.08500",
        "low": "1.08500",
        "close": "1.08500",
        "volume": "2",
        "trades": 1,
        "closed": True,
    }
    # the forming bar comes last, not closed; the empty minute 4 has no bar
    body = await candles(client, f=m[2])
    assert times(body) == [m[2], m[3], *m[5:11]]
    assert [c["closed"] for c in body["data"]["candles"]] == [True] * 7 + [False]
    assert body["data"]["candles"][-1]["close"] == "1.08510"
    # countBack wins over from: the last N bars before `to`
    body = await candles(client, f=m[6], t=m[7], n=3)
    assert times(body) == [m[3], m[5], m[6]]
    assert times(await candles(client, n=2)) == [m[9], m[10]]
    # neither: the latest bars (up to 500), forming included
    assert times(await candles(client)) == [*m[0:4], *m[5:11]]
    # an empty range is an empty list
    assert times(await candles(client, f=m[5], t=m[5])) == []
    assert times(await candles(client, f=iso(T0 - 5 * MIN), t=m[0])) == []

    # coarser resolutions are built from the same ticks; H1 is still forming
    h1 = await gql(client, Q, {"s": "EURUSD", "r": "H1"})
    assert h1["data"]["candles"] == [
        {
            "time": "2024-06-01T00:00:00+00:00",
            "open": "1.08500",
            "high": "1.08510",
            "low": "1.08500",
            "close": "1.08510",
            "volume": "20",
            "trades": 10,
            "closed": False,
        }
    ]

    async def error(**variables):
        body = await gql(client, Q, {"s": "EURUSD", "r": "M1", **variables})
        assert body["data"] is None
        return body["errors"][0]["extensions"]

    assert await error(n=0) == {"code": "INVALID_INPUT", "field": "countBack"}
    assert await error(n=5_001) == {"code": "INVALID_INPUT", "field": "countBack"}
    assert await error(f=m[3], t=m[2]) == {"code": "INVALID_INPUT", "field": "from"}
    assert await error(f="2024-06-01T00:00:00") == {"code": "INVALID_TIMESTAMP", "field": "from"}
    assert await error(s="NOPE") == {"code": "UNKNOWN_INSTRUMENT", "field": "symbol"}
    bad = await gql(client, Q, {"s": "EURUSD", "r": "M2"})
    assert bad["errors"][0]["extensions"]["code"] == "GRAPHQL_VALIDATION_FAILED"


async def test_fast_path_and_regular_execution_agree(services, client):
    md = services.marketdata
    await minutes_of_eurusd(md)
    schema = build_schema(services.settings)._schema
    variants = [
        "time open high low close volume trades closed",
        "closed trades t: time c: close __typename",
        "volume",
        "__typename",
    ]
    for fields in variants:
        for extra in ("", "countBack: 4", 'from: "2024-06-01T00:02:00Z"'):
            args = f'symbol: "EURUSD", resolution: M1 {extra}'
            fast = f"{{ bars: candles({args}) {{ {fields} }} }}"
            regular = f"{{ bars: candles({args}) @include(if: true) {{ {fields} }} }}"
            # the first takes the fast path, the second graphql-core's execution
            assert plan_candles(schema, parse(fast), None, {}) is not None
            assert plan_candles(schema, parse(regular), None, {}) is None
            a = await client.post("/graphql", json={"query": fast})
            b = await client.post("/graphql", json={"query": regular})
            assert a.status_code == b.status_code == 200
            assert a.content == b.content, fields  # byte for byte
            assert "errors" not in a.json()


async def test_at_most_5000_bars_the_most_recent_then_page_back(services, client):
    md = services.marketdata
    n = 5_100
    ts = T0 + np.arange(n, dtype=np.int64) * MIN
    price = 127_000 + np.arange(n, dtype=np.int64) % 50
    ones = np.ones(n, dtype=np.int64)
    written = await md.store.import_arrays(
        "GBPUSD", Resolution.M1, BarArrays(ts, price, price + 3, price - 3, price, ones, ones)
    )
    assert written[Resolution.M1] == n and written[Resolution.M5] == n // 5
    at(md, T0 + (n + 10) * MIN)
    body = await gql(client, Q, {"s": "GBPUSD", "r": "M1", "f": iso(T0)})
    bars = body["data"]["candles"]
    assert len(bars) == 5_000
    assert bars[0]["time"] == iso(T0 + 100 * MIN) and bars[-1]["time"] == iso(T0 + (n - 1) * MIN)
    older = await gql(client, Q, {"s": "GBPUSD", "r": "M1", "f": iso(T0), "t": bars[0]["time"]})
    assert [b["time"] for b in older["data"]["candles"]] == [iso(T0 + i * MIN) for i in range(100)]
    m5 = await gql(client, Q, {"s": "GBPUSD", "r": "M5", "n": 2})
    assert [b["volume"] for b in m5["data"]["candles"]] == ["5", "5"]


async def test_sim_instruments_stats_and_mark_prices(services, client):
    body = await gql(
        client,
        "{ instruments { symbol venue baseAsset quoteAsset priceDecimals quantityDecimals } }",
    )
    sim = {i["symbol"]: i for i in body["data"]["instruments"] if i["venue"] == "SIM"}
    assert set(sim) >= {"EURUSD", "GBPUSD", "XAUUSD", "US30", "NAS100", "BTCUSD", "ETHUSD"}
    assert sim["EURUSD"]["priceDecimals"] == 5 and sim["XAUUSD"]["quoteAsset"] == "USD"
    # price x quantity is exact in the quote asset
    for symbol, ins in sim.items():
        quote = await services.exchange.asset_decimals(ins["quoteAsset"])
        assert quote >= ins["priceDecimals"] + ins["quantityDecimals"], symbol

    md = services.marketdata
    now = await minutes_of_eurusd(md)
    body = await gql(
        client,
        '{ instrument(symbol: "EURUSD") { stats24h { open high low last volume '
        "changePercent trades quoteVolume } } }",
    )
    assert body["data"]["instrument"]["stats24h"] == {
        "open": "1.08500",
        "high": "1.08510",
        "low": "1.08500",
        "last": "1.08510",
        "volume": "20",
        "changePercent": "0.01",
        "trades": 10,
        "quoteVolume": "0",
    }
    # 24 hours later, the window is empty again
    at(md, now + 25 * 3_600_000)
    later = await gql(client, '{ instrument(symbol: "EURUSD") { stats24h { open trades } } }')
    assert later["data"]["instrument"]["stats24h"] == {"open": None, "trades": 0}

    # the latest SIM price goes to the sequencer as a mark price
    assert await md.send_marks() is False
    assert md.counters()["marks_sent"] == 1
    assert await md.send_marks() is False  # unchanged: nothing sent again
    assert md.counters()["marks_sent"] == 1
    # a tick older than the grace window is dropped: no bar change, no mark
    md.ingest(Tick("EURUSD", 100_000, 1, T0 + 9 * MIN, "t"))
    assert md.counters()["ticks_rejected_late"] == 1
    assert await md.send_marks() is False
    assert md.counters()["marks_sent"] == 1
    body = await gql(client, "{ instruments { symbol lastPrice } }")
    marks = {i["symbol"]: i["lastPrice"] for i in body["data"]["instruments"]}
    assert marks["EURUSD"] == "1.08510"


async def test_clob_trades_become_candles_and_survive_a_restart(services, client):
    alice, a_acct = await trader(client, "alice@example.com")
    bob, b_acct = await trader(client, "bob@example.com")
    await deposit(client, alice, a_acct, "USD", "100000")
    await deposit(client, bob, b_acct, "BTC", "1")
    await place(client, bob, b_acct, side="SELL", quantity="0.5", price="50000.00")
    await place(client, alice, a_acct, side="BUY", quantity="0.2", price="50000.00")
    await place(client, alice, a_acct, side="BUY", quantity="0.1", price="50000.00")
    md = services.marketdata
    for _ in range(100):
        bar = md.forming("BTC-USD", Resolution.M1)
        if bar is not None and bar.trades == 2:
            break
        await asyncio.sleep(0.02)
    body = await gql(client, Q, {"s": "BTC-USD", "r": "M1"})
    (candle,) = body["data"]["candles"]
    assert candle["close"] == "50000.00" and candle["volume"] == "0.3000"
    assert candle["trades"] == 2 and candle["closed"] is False

    # A fresh service (a restart) rebuilds the same bar from the trades table.
    fresh = MarketDataService(services.settings, services.db, services.pubsub, services.bus)
    await fresh.load_instruments()
    await fresh.recover(fresh.now_ms())
    await fresh._replay_trades("BTC-USD", initial=True)
    again = fresh.forming("BTC-USD", Resolution.M1)
    assert again is not None
    assert (again.close, again.volume, again.trades) == (5_000_000, 3_000, 2)
    assert Decimal(candle["volume"]) == Decimal(again.volume) / 10_000
