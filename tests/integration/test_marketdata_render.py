"""The candles fast path's formatting equals the regular scalars', value for value."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime
from decimal import Decimal

import numpy as np
import pytest

from tradegraph.exchange.models import Venue
from tradegraph.graphql.marketdata import (
    RawJSON,
    decimal_text,
    encode_response,
    iso_ms,
    render,
    render_json,
)
from tradegraph.graphql.scalars import serialize_decimal
from tradegraph.marketdata.candles import Bar, BarArrays, Resolution
from tradegraph.marketdata.service import CandleSeries, SymbolMeta, parse_pairs
from tradegraph.marketdata.store import WindowStats
from tradegraph.marketdata.udf import UdfSymbol
from tradegraph.marketdata.udf_routes import QuoteData, quote_item
from tradegraph.money import from_minor

FIELDS = ["time", "open", "high", "low", "close", "volume", "trades", "closed", "__typename"]


def test_decimal_text_is_the_decimal_scalars_wire_text():
    rng = random.Random(5)
    values = [0, 1, 5, 9, 10, 99, 100, 12_345, 10**12, -1, -5, -123_456]
    values += [rng.randint(-(10**15), 10**15) for _ in range(2_000)]
    for decimals in range(13):
        for units in values:
            expected = serialize_decimal(from_minor(units, decimals))
            assert decimal_text(units, decimals) == expected
    assert decimal_text(5, 8) == "0.00000005"  # fixed point, never 5E-8


def test_iso_ms_is_isoformat():
    rng = random.Random(6)
    stamps = [0, 1_717_200_000_000, 951_782_400_000, -86_400_000, 1_717_200_000_123]
    stamps += [rng.randint(0, 4_000_000_000_000) for _ in range(2_000)]
    for ts in stamps:
        assert iso_ms(ts) == datetime.fromtimestamp(ts / 1000, UTC).isoformat()


def series(pd: int, qd: int, n: int, forming: bool, seed: int) -> CandleSeries:
    rng = np.random.default_rng(seed)
    ts = 1_717_200_000_000 + np.arange(n, dtype=np.int64) * 3_600_000
    o = rng.integers(1, 10**9, n)
    c = rng.integers(1, 10**9, n)
    h = np.maximum(o, c) + rng.integers(0, 1_000, n)
    lo = np.maximum(1, np.minimum(o, c) - rng.integers(0, 1_000, n))
    v = rng.integers(0, 10**7, n)
    k = rng.integers(0, 500, n)
    meta = SymbolMeta("X", Venue.SIM, "X", "USD", pd, qd, 1, "x", "crypto")
    last = None
    if forming:
        last = Bar("X", Resolution.H1, int(ts[-1]) + 3_600_000, 7, 9, 3, 8, 0, 2)
    return CandleSeries(meta, Resolution.H1, BarArrays(ts, o, h, lo, c, v, k), last)


@pytest.mark.parametrize(("pd", "qd"), [(0, 0), (2, 4), (5, 0), (6, 6), (1, 2)])
def test_render_json_equals_json_of_the_regular_rendering(pd, qd):
    rng = random.Random(pd * 10 + qd)
    for trial in range(12):
        s = series(pd, qd, rng.randint(0, 40), forming=trial % 2 == 0, seed=trial)
        picked = rng.sample(FIELDS, rng.randint(1, len(FIELDS)))
        keys = [(f"a{i}" if rng.random() < 0.3 else f, f) for i, f in enumerate(picked)]
        fast = render_json(s, keys)
        assert fast is not None
        assert fast.text == json.dumps(render(s, keys), separators=(",", ":"))


def test_render_json_declines_what_it_cannot_do_exactly():
    assert render_json(series(8, 0, 3, False, 1), [("open", "open")]) is None
    odd = series(2, 2, 3, False, 1)
    odd.closed.ts[1] += 1  # not on a whole minute
    assert render_json(odd, [("time", "time")]) is None


def test_encode_response_splices_raw_json():
    data = {"data": {"a": RawJSON('[{"x":1}]'), "b": "RawJSON"}, "errors": None}
    text = encode_response(data)
    assert json.loads(text) == {"data": {"a": [{"x": 1}], "b": "RawJSON"}, "errors": None}
    plain = {"data": {"k": ["\x00", 1.5, None]}}
    assert encode_response(plain) == json.dumps(plain, separators=(",", ":"))
    with pytest.raises(TypeError):
        encode_response({"x": Decimal(1)})


def test_quote_item_numbers_and_missing_values():
    sym = UdfSymbol("EURUSD", "Euro / US Dollar", "forex", "SIM", 5, 1, 0, "USD")
    window = WindowStats(108_500, 108_700, 108_400, 108_600, 42, 9, 0, 0)
    item = quote_item(sym, QuoteData(108_650, 108_640, 108_660, window))
    assert item == {
        "s": "ok",
        "n": "SIM:EURUSD",
        "v": {
            "short_name": "EURUSD",
            "exchange": "SIM",
            "description": "Euro / US Dollar",
            "lp": 1.0865,
            "bid": 1.0864,
            "ask": 1.0866,
            "open_price": 1.085,
            "high_price": 1.087,
            "low_price": 1.084,
            "volume": 42,
            "spread": 0.0002,
            "ch": 0.0015,
            "chp": 0.14,
        },
    }
    empty = quote_item(sym, QuoteData(None, None, None, None))
    assert empty["v"] == {
        "short_name": "EURUSD",
        "exchange": "SIM",
        "description": "Euro / US Dollar",
        "volume": 0,
    }


def test_parse_pairs():
    assert parse_pairs(" BTCUSDT:BTCUSD, frxEURUSD:EURUSD ,") == [
        ("BTCUSDT", "BTCUSD"),
        ("frxEURUSD", "EURUSD"),
    ]
    assert parse_pairs("") == []
    with pytest.raises(ValueError, match="VENUE:SYMBOL"):
        parse_pairs("BTCUSDT")
