"""Live candles and SIM tickers over real websockets (graphql-transport-ws), both legs."""

from __future__ import annotations

from tests.e2e.test_exchange_streams import Socket
from tradegraph.marketdata.candles import Resolution
from tradegraph.marketdata.ticks import Tick

T0 = 1_717_200_000_000  # 2024-06-01 00:00 UTC
SUB = """subscription($s: String!, $r: Resolution!) { candles(symbol: $s, resolution: $r) {
  time open high low close volume trades closed } }"""
TICKER = """subscription { ticker(symbols: ["EURUSD"]) {
  symbol last bestBid bestAsk changePercent24h volume24h } }"""


async def test_forming_updates_then_the_closed_bar(services, live_server):
    md = services.marketdata
    clock = {"now": T0 + 10_000}
    md.clock = lambda: clock["now"] / 1000
    md.ingest(Tick("EURUSD", 108_500, 1, T0 + 1_000, "t"))
    await md.step(clock["now"], force=True)
    sock = await Socket.open(live_server)
    try:
        await sock.subscribe("m1", SUB, {"s": "EURUSD", "r": "M1"})
        await sock.subscribe("h1", SUB, {"s": "EURUSD", "r": "H1"})
        first = (await sock.next("m1"))["candles"]  # the bar forming when subscribing
        assert first == {
            "time": "2024-06-01T00:00:00+00:00",
            "open": "1.08500",
            "high": "1.08500",
            "low": "1.08500",
            "close": "1.08500",
            "volume": "1",
            "trades": 1,
            "closed": False,
        }
        assert (await sock.next("h1"))["candles"]["closed"] is False

        md.ingest(Tick("EURUSD", 108_530, 2, T0 + 20_000, "t"))
        clock["now"] = T0 + 21_000
        await md.step(clock["now"], force=True)
        update = (await sock.next("m1"))["candles"]
        assert (update["close"], update["high"], update["trades"], update["closed"]) == (
            "1.08530",
            "1.08530",
            2,
            False,
        )
        h1 = (await sock.next("h1"))["candles"]
        assert (h1["close"], h1["trades"], h1["closed"]) == ("1.08530", 2, False)

        # The minute ends: the final bar (persisted first), then the next forming one.
        md.ingest(Tick("EURUSD", 108_520, 1, T0 + 61_000, "t"))
        clock["now"] = T0 + 62_500
        await md.step(clock["now"], force=True)
        closed = (await sock.next("m1"))["candles"]
        assert closed["time"] == "2024-06-01T00:00:00+00:00" and closed["closed"] is True
        assert (closed["open"], closed["close"], closed["volume"]) == ("1.08500", "1.08530", "3")
        stored = await md.store.bars("EURUSD", Resolution.M1)
        assert [b.ts for b in stored] == [T0]
        nxt = (await sock.next("m1"))["candles"]
        assert nxt["time"] == "2024-06-01T00:01:00+00:00" and nxt["closed"] is False
        h1 = (await sock.next("h1"))["candles"]
        assert (h1["time"], h1["trades"], h1["closed"]) == ("2024-06-01T00:00:00+00:00", 3, False)
    finally:
        await sock.close()


async def test_sim_ticker_stream(services, live_server):
    md = services.marketdata
    now = T0 + 30_000
    md.clock = lambda: now / 1000
    sock = await Socket.open(live_server)
    try:
        await sock.subscribe("t", TICKER)
        # Subscriptions attach asynchronously: keep ticking until the stream answers.
        for i in range(50):
            md.ingest(
                Tick(
                    "EURUSD", 108_500 + i, 1, now - 500 + i, "sim", bid=108_499 + i, ask=108_502 + i
                )
            )
            await md.step(now, force=True)
            try:
                data = (await sock.next("t", timeout=0.2))["ticker"]
                break
            except TimeoutError:
                continue
        else:
            raise AssertionError("no ticker for a SIM symbol")
        assert data["symbol"] == "EURUSD"
        assert data["last"] == f"1.08{500 + i}"
        assert data["bestBid"] == f"1.08{499 + i}" and data["bestAsk"] == f"1.08{502 + i}"
        assert data["volume24h"] == str(i + 1) and data["changePercent24h"] is not None
    finally:
        await sock.close()
