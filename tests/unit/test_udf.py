"""TradingView UDF helpers: every payload field, the range rule, countback, empty ranges."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tradegraph.errors import DomainError, NotFound
from tradegraph.marketdata.candles import Bar, Resolution
from tradegraph.marketdata.udf import (
    SUPPORTED_RESOLUTIONS,
    HistoryRequest,
    UdfSymbol,
    config_payload,
    error_reply,
    format_resolution,
    history_reply,
    no_data_reply,
    ok_history_reply,
    parse_history_params,
    parse_resolution,
    resolve_symbol,
    search_results,
    select_bars,
    symbol_info,
    time_reply,
)

EURUSD = UdfSymbol("EURUSD", "Euro / US Dollar", "forex", "TRADEGRAPH", 5, 1, 2, "USD")
BTCUSD = UdfSymbol("BTCUSD", "Bitcoin / US Dollar", "crypto", "TRADEGRAPH", 2, 1, 6)
US30 = UdfSymbol("US30", "Dow Jones Industrial Average", "index", "SIM", 1, 5, 0)
SYMBOLS = [EURUSD, BTCUSD, US30]

T0 = 1_704_067_200  # 2024-01-01 00:00 UTC, unix seconds


def h1_bars(*hours: int) -> list[Bar]:
    """H1 bars at T0 + hour*3600, with prices derived from the hour (minor units)."""
    return [
        Bar(
            "EURUSD",
            Resolution.H1,
            ts=(T0 + h * 3600) * 1000,
            open=108_500 + h,
            high=108_510 + h,
            low=108_490,
            close=108_505,
            volume=12_345,
            trades=7,
        )
        for h in hours
    ]


# --------------------------------------------------------------------------- resolutions


def test_resolution_strings_round_trip() -> None:
    assert SUPPORTED_RESOLUTIONS == ("1", "5", "15", "30", "60", "240", "1D", "1W")
    expected = dict(zip(SUPPORTED_RESOLUTIONS, Resolution, strict=True))  # enum order is M1..W1
    for text, res in expected.items():
        assert parse_resolution(text) is res
        assert format_resolution(res) == text
    assert parse_resolution("D") is Resolution.D1
    assert parse_resolution("w") is Resolution.W1
    assert parse_resolution(" 60 ") is Resolution.H1


@pytest.mark.parametrize("bad", ["", "2", "1M", "120", "1H", "S", "abc"])
def test_unknown_resolutions_are_domain_errors(bad: str) -> None:
    with pytest.raises(DomainError) as e:
        parse_resolution(bad)
    assert e.value.code == "INVALID_RESOLUTION" and e.value.field == "resolution"


# --------------------------------------------------------------------------- config


def test_config_payload() -> None:
    cfg = config_payload(SYMBOLS)
    assert cfg == {
        "supports_search": True,
        "supports_group_request": False,
        "supported_resolutions": ["1", "5", "15", "30", "60", "240", "1D", "1W"],
        "supports_marks": False,
        "supports_timescale_marks": False,
        "supports_time": True,
        "exchanges": [
            {"value": "", "name": "All Exchanges", "desc": ""},
            {"value": "SIM", "name": "SIM", "desc": "SIM"},
            {"value": "TRADEGRAPH", "name": "TRADEGRAPH", "desc": "TRADEGRAPH"},
        ],
        "symbols_types": [
            {"name": "All types", "value": ""},
            {"name": "crypto", "value": "crypto"},
            {"name": "forex", "value": "forex"},
            {"name": "index", "value": "index"},
        ],
    }
    json.dumps(cfg)  # serializable as is
    # The protocol requires one of search / group request.
    assert cfg["supports_search"] or cfg["supports_group_request"]


# --------------------------------------------------------------------------- symbols


def test_symbol_info_fields() -> None:
    info = symbol_info(EURUSD)
    assert info == {
        "name": "EURUSD",
        "ticker": "EURUSD",
        "full_name": "TRADEGRAPH:EURUSD",
        "description": "Euro / US Dollar",
        "type": "forex",
        "session": "24x7",
        "timezone": "Etc/UTC",
        "exchange": "TRADEGRAPH",
        "listed_exchange": "TRADEGRAPH",
        "format": "price",
        "minmov": 1,
        "pricescale": 100_000,
        "has_intraday": True,
        "intraday_multipliers": ["1", "5", "15", "30", "60", "240"],
        "has_daily": True,
        "daily_multipliers": ["1"],
        "has_weekly_and_monthly": True,
        "weekly_multipliers": ["1"],
        "has_empty_bars": False,
        "supported_resolutions": ["1", "5", "15", "30", "60", "240", "1D", "1W"],
        "volume_precision": 2,
        "visible_plots_set": "ohlcv",
        "data_status": "streaming",
        "currency_code": "USD",
    }
    us30 = symbol_info(US30)
    assert us30["minmov"] == 5 and us30["pricescale"] == 10 and "currency_code" not in us30
    assert us30["volume_precision"] == 0


def test_resolve_symbol() -> None:
    assert resolve_symbol(SYMBOLS, "eurusd") is EURUSD
    assert resolve_symbol(SYMBOLS, "TRADEGRAPH:BTCUSD") is BTCUSD
    with pytest.raises(NotFound):
        resolve_symbol(SYMBOLS, "SIM:BTCUSD")  # right symbol, wrong exchange
    with pytest.raises(NotFound) as e:
        resolve_symbol(SYMBOLS, "DOGE")
    assert e.value.field == "symbol" and e.value.code == "NOT_FOUND"


def test_search_results() -> None:
    usd = search_results(SYMBOLS, "usd")
    assert [r["symbol"] for r in usd] == ["BTCUSD", "EURUSD"]
    assert usd[0] == {
        "symbol": "BTCUSD",
        "full_name": "TRADEGRAPH:BTCUSD",
        "description": "Bitcoin / US Dollar",
        "exchange": "TRADEGRAPH",
        "ticker": "BTCUSD",
        "type": "crypto",
    }
    # Exact match first, then prefix, then substring / description.
    syms = [*SYMBOLS, UdfSymbol("EUR", "Euro index", "index", "SIM", 2)]
    assert [r["symbol"] for r in search_results(syms, "EUR")] == ["EUR", "EURUSD"]
    assert [r["symbol"] for r in search_results(SYMBOLS, "dow jones")] == ["US30"]
    assert [r["symbol"] for r in search_results(SYMBOLS, "", type="crypto")] == ["BTCUSD"]
    assert [r["symbol"] for r in search_results(SYMBOLS, "", exchange="sim")] == ["US30"]
    assert len(search_results(SYMBOLS, "", limit=2)) == 2
    assert search_results(SYMBOLS, "nothing-like-this") == []
    many = [UdfSymbol(f"S{i:03}", "", "crypto", "X", 2) for i in range(500)]
    assert len(search_results(many, "", limit=10_000)) == 100  # hard maximum
    assert len(search_results(many, "")) == 30  # default


# --------------------------------------------------------------------------- history


def test_history_ok_reply_uses_numbers_and_seconds() -> None:
    bars = h1_bars(0, 1)
    reply = history_reply(bars, T0, T0 + 7200, price_decimals=5, volume_precision=2)
    assert reply == {
        "s": "ok",
        "t": [T0, T0 + 3600],
        "o": [1.085, 1.08501],
        "h": [1.0851, 1.08511],
        "l": [1.0849, 1.0849],
        "c": [1.08505, 1.08505],
        "v": [123.45, 123.45],
    }
    text = json.dumps(reply)
    assert '"1.085"' not in text and "1.085," in text  # numbers, never strings
    # No decimals: integers stay integers.
    assert ok_history_reply(bars[:1], 0)["o"] == [108_500]
    assert ok_history_reply([], 2) == {
        "s": "ok",
        "t": [],
        "o": [],
        "h": [],
        "l": [],
        "c": [],
        "v": [],
    }


def test_from_inclusive_to_exclusive() -> None:
    bars = h1_bars(0, 1, 2, 3)
    times = lambda f, t: [b.ts // 1000 for b in select_bars(bars, f, t)]  # noqa: E731
    assert times(T0 + 3600, T0 + 3 * 3600) == [T0 + 3600, T0 + 7200]
    assert times(T0 + 3599, T0 + 3 * 3600 + 1) == [T0 + 3600, T0 + 7200, T0 + 3 * 3600]
    assert times(T0 + 3601, T0 + 3 * 3600) == [T0 + 7200]
    assert times(T0, T0) == []


def test_countback_wins_over_from() -> None:
    bars = h1_bars(0, 1, 2, 3, 4)
    # `from` would select only hour 3, but countback asks for 3 bars before `to`.
    got = select_bars(bars, T0 + 3 * 3600, T0 + 4 * 3600, countback=3)
    assert [b.ts // 1000 - T0 for b in got] == [3600, 7200, 10800]
    # Fewer bars exist than asked for: all of those before `to`, even before `from`.
    assert select_bars(bars, T0 + 1800, T0 + 2 * 3600, countback=10) == bars[:2]
    # A bar opening exactly at `to` is excluded from the count.
    assert select_bars(bars, T0, T0 + 4 * 3600, countback=1) == [bars[3]]


def test_countback_counts_bars_not_time_and_skips_gaps() -> None:
    bars = h1_bars(0, 1, 50, 51, 52)  # a two-day gap
    reply = history_reply(bars, T0 + 52 * 3600, T0 + 52 * 3600, 4, price_decimals=5)
    assert reply["s"] == "ok" and reply["t"] == [T0, T0 + 3600, T0 + 50 * 3600, T0 + 51 * 3600]
    assert reply["o"] == [1.085, 1.08501, 1.0855, 1.08551]


def test_empty_range_is_no_data_with_next_time_of_latest_earlier_bar() -> None:
    bars = h1_bars(0, 1, 50)
    reply = history_reply(bars, T0 + 10 * 3600, T0 + 20 * 3600, price_decimals=5)
    assert reply == {"s": "no_data", "nextTime": T0 + 3600}
    # Nothing before `from`: nextTime omitted.
    assert history_reply(bars, T0 - 86_400, T0, price_decimals=5) == {"s": "no_data"}
    assert history_reply([], T0, T0 + 3600, price_decimals=5) == {"s": "no_data"}
    # countback with nothing before `to`.
    assert history_reply(bars, T0 - 7200, T0, 5, price_decimals=5) == {"s": "no_data"}
    assert no_data_reply() == {"s": "no_data"} and no_data_reply(5) == {
        "s": "no_data",
        "nextTime": 5,
    }


def test_bad_ranges_answer_error() -> None:
    bars = h1_bars(0, 1)
    assert history_reply(bars, T0 + 10, T0, price_decimals=5) == {
        "s": "error",
        "errmsg": "from must not be after to",
    }
    reply = history_reply(bars, T0, T0 + 10, -1, price_decimals=5)
    assert reply["s"] == "error" and "countback" in reply["errmsg"]
    assert error_reply("boom") == {"s": "error", "errmsg": "boom"}


def test_max_bars_keeps_the_most_recent() -> None:
    bars = h1_bars(*range(10))
    assert select_bars(bars, T0, T0 + 86_400, max_bars=3) == bars[-3:]
    assert select_bars(bars, T0, T0 + 86_400, countback=5, max_bars=3) == bars[-3:]


@given(
    st.lists(st.integers(0, 200), unique=True).map(sorted),
    st.integers(-5, 205),
    st.integers(0, 60),
    st.one_of(st.none(), st.integers(0, 30)),
)
def test_select_bars_matches_the_definition(
    hours: list[int], start: int, span: int, countback: int | None
) -> None:
    bars = h1_bars(*hours)
    f, t = T0 + start * 1800, T0 + (start + span) * 1800  # half-hour steps: off-bar edges too
    got = select_bars(bars, f, t, countback)
    before_to = [b for b in bars if b.ts < t * 1000]
    in_range = [b for b in before_to if b.ts >= f * 1000]
    expected = before_to[-countback:] if countback else in_range
    assert got == expected
    reply = history_reply(bars, f, t, countback, price_decimals=5)
    if expected:
        assert reply["t"] == [b.ts // 1000 for b in expected]
    else:
        earlier = [b.ts // 1000 for b in bars if b.ts < f * 1000]
        assert reply == ({"s": "no_data", "nextTime": earlier[-1]} if earlier else {"s": "no_data"})


# --------------------------------------------------------------------------- params, time


def test_parse_history_params() -> None:
    req = parse_history_params(
        {"symbol": "EURUSD", "resolution": "1D", "from": "100", "to": "200", "countback": "3"}
    )
    assert req == HistoryRequest("EURUSD", Resolution.D1, 100, 200, 3)
    req = parse_history_params(
        {"symbol": "X", "resolution": "5", "from": "1", "to": "2", "firstDataRequest": "true"}
    )
    assert req.countback is None and req.resolution is Resolution.M5
    assert (
        parse_history_params(
            {"symbol": "X", "resolution": "5", "from": "1", "to": "2", "countback": "0"}
        ).countback
        is None
    )


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"resolution": "1", "from": "1", "to": "2"}, "symbol"),
        ({"symbol": "X", "resolution": "7", "from": "1", "to": "2"}, "resolution"),
        ({"symbol": "X", "resolution": "1", "to": "2"}, "from"),
        ({"symbol": "X", "resolution": "1", "from": "a", "to": "2"}, "from"),
        ({"symbol": "X", "resolution": "1", "from": "1"}, "to"),
        ({"symbol": "X", "resolution": "1", "from": "3", "to": "2"}, "from"),
        (
            {"symbol": "X", "resolution": "1", "from": "1", "to": "2", "countback": "-1"},
            "countback",
        ),
        ({"symbol": "X", "resolution": "1", "from": "1", "to": "2", "countback": "x"}, "countback"),
    ],
)
def test_parse_history_params_errors(params: dict[str, str], field: str) -> None:
    with pytest.raises(DomainError) as e:
        parse_history_params(params)
    assert e.value.field == field


def test_time_reply() -> None:
    assert time_reply(1_704_067_200_999) == "1704067200"
