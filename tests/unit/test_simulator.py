"""Market simulator: determinism, price grid, realised volatility and jump rate."""

from __future__ import annotations

import itertools
import math
import random
from decimal import Decimal

import pytest

from tradegraph.errors import DomainError
from tradegraph.marketdata.simulator import DEFAULT_SYMBOLS, MarketSimulator, SymbolConfig
from tradegraph.marketdata.ticks import Tick, minor_to_price

T0 = 1_717_200_000_000  # 2024-06-01 00:00 UTC
HOUR = 3_600_000
YEAR_S = 365 * 86_400


def cfg(**kw: object) -> SymbolConfig:
    base: dict[str, object] = {
        "symbol": "TEST",
        "start_price": Decimal("100.0000"),
        "price_decimals": 4,
        "volatility": 0.5,
        "ticks_per_second": 2.0,
    }
    base.update(kw)
    return SymbolConfig(**base)  # type: ignore[arg-type]


def realised_vol(ticks: list[Tick]) -> float:
    """Annualised volatility from tick-to-tick log returns of the published price."""
    prices = [t.price for t in ticks]
    r2 = sum(math.log(b / a) ** 2 for a, b in itertools.pairwise(prices))
    years = (ticks[-1].ts - ticks[0].ts) / 1000 / YEAR_S
    return math.sqrt(r2 / years)


def test_default_symbols() -> None:
    by_name = {c.symbol: c for c in DEFAULT_SYMBOLS}
    assert list(by_name) == [
        "EURUSD",
        "GBPUSD",
        "USDJPY",
        "XAUUSD",
        "US30",
        "NAS100",
        "BTCUSD",
        "ETHUSD",
    ]
    assert by_name["EURUSD"].price_decimals == 5 and by_name["USDJPY"].price_decimals == 3
    for c in DEFAULT_SYMBOLS:
        assert minor_to_price(c.start_minor, c.price_decimals) == c.start_price
        assert 0 < c.diffusion_volatility <= c.volatility
        assert c.jump_probability > 0 and c.kind in {"forex", "commodity", "index", "crypto"}
    # Every default symbol ticks within a minute and stays near its start price.
    sim = MarketSimulator(seed=3, start_ms=T0)
    ticks = sim.advance(T0 + 60_000)
    assert {t.symbol for t in ticks} == set(by_name)
    for t in ticks:
        start = by_name[t.symbol].start_minor
        assert abs(t.price / start - 1) < 0.05 and t.source == "sim"


def test_same_seed_same_ticks_regardless_of_how_the_clock_is_sliced() -> None:
    one = MarketSimulator(seed=42, start_ms=T0).advance(T0 + HOUR)
    sim = MarketSimulator(seed=42, start_ms=T0)
    rng = random.Random(0)
    sliced: list[Tick] = []
    now = T0
    while now < T0 + HOUR:
        prev = now
        now = min(T0 + HOUR, now + rng.choice([1, 7, 100, 250, 1_000, 30_000]))
        batch = sim.advance(now)
        assert all(prev < t.ts <= now for t in batch)
        sliced.extend(batch)
    assert sliced == one and len(one) > 50_000
    assert [t.ts for t in one] == sorted(t.ts for t in one)
    assert sim.advance(now) == [] and sim.advance(now - 5) == []
    other = MarketSimulator(seed=43, start_ms=T0).advance(T0 + HOUR)
    assert [t.price for t in other[:100]] != [t.price for t in one[:100]]


def test_symbols_have_independent_streams() -> None:
    alone = MarketSimulator(1, T0, [cfg(symbol="A")]).advance(T0 + HOUR)
    both = MarketSimulator(1, T0, [cfg(symbol="B"), cfg(symbol="A")]).advance(T0 + HOUR)
    assert [t for t in both if t.symbol == "A"] == alone


def test_prices_on_the_tick_grid_inside_the_spread() -> None:
    grid = cfg(
        start_price=Decimal("1234.56"),
        price_decimals=2,
        tick_size=25,
        volatility=2.0,
        jump_probability=0.0001,
        jump_size=0.005,
        spread_bps=3.0,
        ticks_per_second=20.0,
    )
    assert grid.start_minor == 123_450
    ticks = MarketSimulator(9, T0, [grid, *DEFAULT_SYMBOLS]).advance(T0 + HOUR)
    steps = {c.symbol: c.tick_size for c in [grid, *DEFAULT_SYMBOLS]}
    assert len({t.price for t in ticks if t.symbol == "TEST"}) > 20
    for t in ticks:
        step = steps[t.symbol]
        assert t.bid is not None and t.ask is not None
        assert t.price % step == 0 and t.bid % step == 0 and t.ask % step == 0
        assert 0 < t.bid <= t.price <= t.ask and t.bid < t.ask
        assert t.size >= 1


def test_prices_never_reach_zero() -> None:
    # A drift of -1e5 per year is about -11 in log price per hour: a total collapse.
    crash = cfg(start_price=Decimal("0.03"), price_decimals=2, volatility=3.0, drift=-1e5)
    ticks = MarketSimulator(5, T0, [crash]).advance(T0 + HOUR)
    assert ticks[-1].price == 1  # pinned at one tick
    assert all(t.price >= 1 and t.bid is not None and t.bid >= 1 for t in ticks)
    assert all(t.ask is not None and t.bid is not None and t.ask > t.bid for t in ticks)


def test_realised_volatility_matches_config_without_jumps() -> None:
    ticks = MarketSimulator(11, T0, [cfg(volatility=0.5)]).advance(T0 + 24 * HOUR)
    assert len(ticks) > 150_000
    assert realised_vol(ticks) == pytest.approx(0.5, rel=0.05)


def test_realised_volatility_includes_jumps() -> None:
    c = cfg(volatility=0.5, jump_probability=0.0005, jump_size=0.002)
    assert c.diffusion_volatility == pytest.approx(math.sqrt(0.25 - c.jump_variance))
    assert c.jump_variance / 0.25 > 0.4  # jumps carry a good part of the variance
    ticks = MarketSimulator(12, T0, [c]).advance(T0 + 24 * HOUR)
    assert realised_vol(ticks) == pytest.approx(0.5, rel=0.1)


def test_drift_moves_the_price() -> None:
    up = MarketSimulator(4, T0, [cfg(volatility=0.2, drift=30.0)]).advance(T0 + 24 * HOUR)
    # Expected log move 30/365 = 0.082 against a daily sigma of about 0.01.
    assert math.log(up[-1].price / up[0].price) == pytest.approx(30 / 365, abs=0.04)


def test_jumps_happen_at_the_configured_rate() -> None:
    c = cfg(volatility=1.2, jump_probability=0.002, jump_size=0.002, ticks_per_second=5.0)
    sim = MarketSimulator(21, T0, [c])
    ticks = sim.advance(T0 + 6 * HOUR)
    stats = sim.stats("TEST")
    assert stats.ticks == len(ticks)
    assert stats.jumps == pytest.approx(0.002 * len(ticks), rel=0.2)
    # The jumps are in the prices: diffusion per tick is ~60x smaller than a jump.
    big = sum(abs(math.log(b.price / a.price)) > 0.001 for a, b in itertools.pairwise(ticks))
    assert big == stats.jumps
    # And ticks arrive at the configured rate.
    assert len(ticks) == pytest.approx(5.0 * 6 * 3600, rel=0.02)
    assert sim.last_tick("TEST") == ticks[-1]


def test_config_validation() -> None:
    for bad in (
        {"start_price": Decimal(0)},
        {"volatility": -0.1},
        {"jump_probability": 1.5},
        {"ticks_per_second": 0.0},
        {"tick_size": 0},
        {"volatility": 0.1, "jump_probability": 0.01, "jump_size": 0.01},  # jumps > vol
    ):
        with pytest.raises(DomainError) as e:
            cfg(**bad)
        assert e.value.code == "INVALID_CONFIG"
    with pytest.raises(DomainError):
        MarketSimulator(1, T0, [cfg(), cfg()])
    with pytest.raises(DomainError) as e:
        MarketSimulator(1, T0).stats("NOPE")
    assert e.value.code == "NOT_FOUND"
