"""``/datafeed/*`` against the TradingView UDF protocol, field by field, on both legs."""

from __future__ import annotations

from tradegraph.marketdata.service import MarketDataService
from tradegraph.marketdata.ticks import Tick

T0 = 1_717_200_000_000  # 2024-06-01 00:00 UTC
MIN = 60_000
S0 = T0 // 1000


def is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


async def seeded(md: MarketDataService) -> None:
    """EURUSD ticks in minutes 0..10 except 4; the clock in minute 10 (forming)."""
    now = T0 + 10 * MIN + 30_000
    md.clock = lambda: now / 1000
    for minute in range(11):
        if minute != 4:
            for k, delta in enumerate((0, 7, -3)):
                price = 108_500 + minute * 10 + delta
                md.ingest(Tick("EURUSD", price, 1 + k, T0 + minute * MIN + k * 1_000, "t"))
    md.ingest(Tick("EURUSD", 108_600, 0, T0 + 10 * MIN + 20_000, "t", bid=108_599, ask=108_601))
    await md.step(now, force=True)


async def test_config_symbols_search_and_time(services, client):
    config = (await client.get("/datafeed/config")).json()
    assert config["supports_search"] is True and config["supports_group_request"] is False
    assert config["supported_resolutions"] == ["1", "5", "15", "30", "60", "240", "1D", "1W"]
    assert config["supports_time"] is True and config["supports_marks"] is False
    assert {"value": "SIM", "name": "SIM", "desc": "SIM"} in config["exchanges"]
    assert {"name": "forex", "value": "forex"} in config["symbols_types"]

    info = (await client.get("/datafeed/symbols", params={"symbol": "SIM:EURUSD"})).json()
    assert info["name"] == info["ticker"] == "EURUSD"
    assert info["full_name"] == "SIM:EURUSD" and info["exchange"] == "SIM"
    assert info["description"] == "Euro / US Dollar" and info["type"] == "forex"
    assert info["session"] == "24x7" and info["timezone"] == "Etc/UTC"
    assert info["minmov"] == 1 and info["pricescale"] == 100_000  # numbers, not strings
    assert info["has_intraday"] is True and info["has_empty_bars"] is False
    assert info["supported_resolutions"] == config["supported_resolutions"]
    assert info["volume_precision"] == 0 and info["currency_code"] == "USD"
    btc = (await client.get("/datafeed/symbols", params={"symbol": "btc-usd"})).json()
    assert btc["exchange"] == "CLOB" and btc["pricescale"] == 100 and btc["volume_precision"] == 4
    unknown = await client.get("/datafeed/symbols", params={"symbol": "NOPE"})
    assert unknown.status_code == 200
    assert unknown.json()["s"] == "error" and "NOPE" in unknown.json()["errmsg"]

    found = (await client.get("/datafeed/search", params={"query": "usd", "limit": 3})).json()
    assert len(found) == 3
    assert set(found[0]) == {"symbol", "full_name", "description", "exchange", "ticker", "type"}
    fx = (await client.get("/datafeed/search", params={"query": "EUR", "type": "forex"})).json()
    assert [f["symbol"] for f in fx] == ["EURUSD"]
    none = (await client.get("/datafeed/search", params={"query": "zzz"})).json()
    assert none == []

    services.marketdata.clock = lambda: 1_717_200_123.9
    now = await client.get("/datafeed/time")
    assert now.status_code == 200 and now.text == "1717200123"


async def test_history_ok_countback_no_data_and_errors(services, client):
    await seeded(services.marketdata)

    async def history(**params):
        query = {"symbol": "EURUSD", "resolution": "1", **params}
        response = await client.get("/datafeed/history", params=query)
        assert response.status_code == 200
        return response.json()

    ok = await history(**{"from": S0, "to": S0 + 3 * 60})
    assert ok == {
        "s": "ok",
        "t": [S0, S0 + 60, S0 + 120],
        "o": [1.085, 1.0851, 1.0852],
        "h": [1.08507, 1.08517, 1.08527],
        "l": [1.08497, 1.08507, 1.08517],
        "c": [1.08497, 1.08507, 1.08517],
        "v": [6, 6, 6],
    }
    for key in "ohlcv":
        assert all(is_number(x) for x in ok[key])
    # `to` is exclusive, `from` inclusive; the empty minute 4 has no bar; forming bar last
    tail = await history(**{"from": S0 + 180, "to": S0 + 3600})
    assert tail["t"] == [S0 + 180, *(S0 + 60 * m for m in range(5, 11))]
    assert tail["c"][-1] == 1.086
    # countback: the last N bars before `to`, whatever `from` says
    back = await history(**{"from": S0 + 400, "to": S0 + 7 * 60, "countback": 3})
    assert back["t"] == [S0 + 180, S0 + 300, S0 + 360]
    big = await history(**{"from": S0, "to": S0 + 3600, "countback": 10_000})
    assert len(big["t"]) == 10
    # higher resolutions and daily bars start at 00:00 UTC
    five = await history(resolution="5", **{"from": S0, "to": S0 + 3600})
    assert five["t"] == [S0, S0 + 300, S0 + 600] and five["v"] == [24, 30, 6]
    daily = await history(resolution="1D", **{"from": S0 - 86_400, "to": S0 + 86_400})
    assert daily["t"] == [S0] and daily["h"] == [1.08607]

    # an empty range after data: no_data with nextTime = the newest bar before `from`
    gap = await history(**{"from": S0 + 240, "to": S0 + 300})
    assert gap == {"s": "no_data", "nextTime": S0 + 180}
    later = await history(**{"from": S0 + 7200, "to": S0 + 9000})
    assert later == {"s": "no_data", "nextTime": S0 + 600}
    before = await history(**{"from": S0 - 3600, "to": S0})
    assert before == {"s": "no_data"}
    assert await history(**{"from": S0 - 3600, "to": S0, "countback": 5}) == {"s": "no_data"}

    for params, fragment in (
        ({"resolution": "2", "from": S0, "to": S0 + 60}, "resolution"),
        ({"from": S0 + 60, "to": S0}, "from"),
        ({"from": "yesterday", "to": S0}, "from"),
        ({"to": S0}, "from"),
        ({"symbol": "NOPE", "from": S0, "to": S0 + 60}, "NOPE"),
    ):
        reply = await history(**params)
        assert reply["s"] == "error" and fragment in reply["errmsg"], (params, reply)
        assert set(reply) == {"s", "errmsg"}


async def test_quotes(services, client):
    await seeded(services.marketdata)
    reply = (
        await client.get("/datafeed/quotes", params={"symbols": "SIM:EURUSD,BTC-USD,NOPE"})
    ).json()
    assert reply["s"] == "ok"
    eur, btc, nope = reply["d"]
    assert eur["s"] == "ok" and eur["n"] == "SIM:EURUSD"
    v = eur["v"]
    assert v["short_name"] == "EURUSD" and v["exchange"] == "SIM"
    assert v["lp"] == 1.086 and v["bid"] == 1.08599 and v["ask"] == 1.08601
    assert v["open_price"] == 1.085 and v["high_price"] == 1.08607 and v["low_price"] == 1.08497
    assert v["ch"] == 0.001 and v["chp"] == 0.09 and v["volume"] == 60
    assert all(is_number(v[k]) for k in ("lp", "bid", "ask", "spread", "ch", "chp", "volume"))
    assert btc["s"] == "ok" and btc["v"]["volume"] == 0 and "lp" not in btc["v"]
    assert nope == {"s": "error", "n": "NOPE", "v": {}}
    missing = (await client.get("/datafeed/quotes")).json()
    assert missing["s"] == "error"


async def test_rate_limited(services, client):
    services.settings.rate_limit_ip_per_minute = 3
    codes = [(await client.get("/datafeed/time")).status_code for _ in range(4)]
    assert codes == [200, 200, 200, 429]
    limited = await client.get("/datafeed/config")
    assert limited.json()["s"] == "error" and int(limited.headers["retry-after"]) >= 1
