"""Candles: every path (online, rollup, vectorized) against a naive calendar computation."""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tradegraph.errors import DomainError
from tradegraph.marketdata.candles import (
    ALL_RESOLUTIONS,
    Bar,
    BarEventKind,
    CandleAggregator,
    Resolution,
    backfill,
    rollup,
)
from tradegraph.marketdata.ticks import (
    Feed,
    Tick,
    datetime_to_ms,
    minor_to_price,
    ms_to_datetime,
    price_to_minor,
)

Trade = tuple[int, int, int]  # (ts ms, price, size) in arrival order

# --------------------------------------------------------------------------- reference


def _calendar_bucket(ts: int, res: Resolution) -> int:
    """Bucket start by calendar arithmetic on datetimes (independent of the module)."""
    dt = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=ts)
    day = dt.replace(hour=0, minute=0, second=0, microsecond=0)
    if res is Resolution.W1:
        start = day - timedelta(days=dt.weekday())  # Monday 00:00 UTC
    elif res is Resolution.D1:
        start = day
    elif res is Resolution.H4:
        start = day.replace(hour=dt.hour - dt.hour % 4)
    elif res is Resolution.H1:
        start = day.replace(hour=dt.hour)
    else:
        step = res.seconds // 60
        start = day.replace(hour=dt.hour, minute=dt.minute - dt.minute % step)
    return datetime_to_ms(start)


def naive_bars(trades: list[Trade], res: Resolution, symbol: str = "X") -> list[Bar]:
    """OHLCV per bucket: open/close by (ts, arrival order), as the module promises."""
    groups: dict[int, list[tuple[int, int, int, int]]] = defaultdict(list)
    for seq, (ts, price, size) in enumerate(trades):
        groups[_calendar_bucket(ts, res)].append((ts, seq, price, size))
    out = []
    for start in sorted(groups):
        items = sorted(groups[start])
        prices = [p for _, _, p, _ in items]
        out.append(
            Bar(
                symbol,
                res,
                start,
                open=items[0][2],
                high=max(prices),
                low=min(prices),
                close=items[-1][2],
                volume=sum(s for _, _, _, s in items),
                trades=len(items),
            )
        )
    return out


def accepted_by_grace(trades: list[Trade], grace_ms: int) -> tuple[list[Trade], int]:
    """The trades a grace window keeps: not older than (latest ts so far - grace)."""
    kept: list[Trade] = []
    latest: int | None = None
    rejected = 0
    for t in trades:
        if latest is not None and t[0] < latest - grace_ms:
            rejected += 1
            continue
        kept.append(t)
        latest = t[0] if latest is None else max(latest, t[0])
    return kept, rejected


def run_online(
    trades: list[Trade], grace_ms: int, symbol: str = "X"
) -> tuple[CandleAggregator, dict[Resolution, list[Bar]]]:
    """Feed trades, then close everything; final bar per bucket = last event for it."""
    agg = CandleAggregator(grace_ms=grace_ms)
    latest: dict[tuple[Resolution, int], Bar] = {}
    closed_seen: set[tuple[Resolution, int]] = set()
    for ts, price, size in trades:
        for ev in agg.add(symbol, price, size, ts):
            key = (ev.bar.resolution, ev.bar.ts)
            wm = agg.watermark(symbol)
            assert wm is not None
            assert ev.bar.end_ts <= wm, "a bar was emitted before its bucket ended"
            if ev.kind is BarEventKind.CLOSED:
                assert key not in closed_seen, "bar closed twice"
                closed_seen.add(key)
            latest[key] = ev.bar
    if trades:
        end = max(t for t, _, _ in trades) + Resolution.W1.ms * 2
        for ev in agg.advance(end):
            assert ev.kind is BarEventKind.CLOSED
            latest[(ev.bar.resolution, ev.bar.ts)] = ev.bar
    by_res: dict[Resolution, list[Bar]] = {r: [] for r in ALL_RESOLUTIONS}
    for (res, _), bar in sorted(latest.items(), key=lambda kv: (kv[0][0].seconds, kv[0][1])):
        by_res[res].append(bar)
    return agg, by_res


# --------------------------------------------------------------------------- generators

# A Sunday evening shortly before a week/day/H4 boundary, so boundaries get crossed.
BASE = datetime_to_ms(datetime(2024, 3, 10, 23, 57, 0, tzinfo=UTC))
GRACES = [0, 1_000, 65_000, 300_000]


@st.composite
def trade_streams(draw: st.DrawFn, allow_late: bool = True) -> list[Trade]:
    base = BASE + draw(st.integers(-3 * 86_400_000, 3 * 86_400_000))
    n = draw(st.integers(1, 250))
    ts = base
    out: list[Trade] = []
    for _ in range(n):
        kind = draw(st.integers(0, 19))
        if kind == 0:  # a gap: empty buckets in every small resolution
            ts += draw(st.integers(60_000, 9 * 86_400_000))
        elif kind == 1 and allow_late:  # a late tick, sometimes beyond grace
            how = draw(st.integers(0, 2))
            if how == 0:
                ts_out = ts - draw(st.integers(1, 400_000))
            elif how == 1:  # exactly at a grace edge, or just past it
                ts_out = ts - draw(st.sampled_from(GRACES)) - draw(st.integers(0, 1))
            else:  # the very time of an earlier trade: tie-breaking by arrival
                ts_out = draw(st.sampled_from(out))[0] if out else ts
            out.append((ts_out, draw(st.integers(1, 1000)), draw(st.integers(0, 50))))
            continue
        elif kind == 2:  # the exact bucket boundary
            ts = Resolution.M1.bucket_end(ts)
        else:
            ts += draw(st.integers(0, 30_000))
        out.append((ts, draw(st.integers(1, 1000)), draw(st.integers(0, 50))))
    return out


def seeded_stream(seed: int, n: int) -> list[Trade]:
    rng = random.Random(seed)
    ts = BASE - rng.randrange(10 * 86_400_000)
    price = 100_000
    out = []
    for _ in range(n):
        r = rng.random()
        if r < 0.002:
            ts += rng.randrange(86_400_000 * 3)
        elif r < 0.02:
            out.append((ts - rng.randrange(200_000), price + rng.randrange(-50, 50), 1))
            continue
        else:
            ts += rng.randrange(5_000)
        price = max(1, price + rng.randrange(-20, 21))
        out.append((ts, price, rng.randrange(0, 100)))
    return out


# --------------------------------------------------------------------------- Resolution


def test_resolution_seconds_and_alignment() -> None:
    assert [r.seconds for r in ALL_RESOLUTIONS] == [
        60,
        300,
        900,
        1800,
        3600,
        14400,
        86400,
        604800,
    ]
    # The epoch was a Thursday: its week started Monday 1969-12-29.
    assert Resolution.W1.bucket_start(0) == datetime_to_ms(datetime(1969, 12, 29, tzinfo=UTC))
    monday = datetime_to_ms(datetime(2024, 1, 1, tzinfo=UTC))  # a Monday
    assert Resolution.W1.bucket_start(monday) == monday
    assert Resolution.W1.bucket_start(monday - 1) == monday - Resolution.W1.ms
    assert Resolution.W1.bucket_start(monday + 6 * 86_400_000 + 86_399_999) == monday
    wed = datetime_to_ms(datetime(2024, 1, 3, 13, 47, 12, tzinfo=UTC))
    assert Resolution.D1.bucket_start(wed) == datetime_to_ms(datetime(2024, 1, 3, tzinfo=UTC))
    assert Resolution.H4.bucket_start(wed) == datetime_to_ms(datetime(2024, 1, 3, 12, tzinfo=UTC))
    assert Resolution.M15.bucket_start(wed) == datetime_to_ms(
        datetime(2024, 1, 3, 13, 45, tzinfo=UTC)
    )
    assert Resolution.M1.bucket_end(wed) == datetime_to_ms(datetime(2024, 1, 3, 13, 48, tzinfo=UTC))


@given(st.integers(-(10**13), 10**13), st.sampled_from(ALL_RESOLUTIONS))
def test_bucket_start_matches_calendar(ts: int, res: Resolution) -> None:
    assert res.bucket_start(ts) == _calendar_bucket(ts, res)


def test_divides() -> None:
    for i, fine in enumerate(ALL_RESOLUTIONS):
        for coarse in ALL_RESOLUTIONS[i:]:
            assert fine.divides(coarse)
        for finer in ALL_RESOLUTIONS[:i]:
            assert not fine.divides(finer)


# --------------------------------------------------------------------------- all paths


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(trade_streams(), st.sampled_from(GRACES))
def test_online_matches_naive(trades: list[Trade], grace_ms: int) -> None:
    kept, rejected = accepted_by_grace(trades, grace_ms)
    agg, online = run_online(trades, grace_ms)
    assert agg.rejected == rejected
    for res in ALL_RESOLUTIONS:
        assert online[res] == naive_bars(kept, res), res


@settings(max_examples=150, deadline=None)
@given(trade_streams())
def test_rollup_matches_naive(trades: list[Trade]) -> None:
    naive = {res: naive_bars(trades, res) for res in ALL_RESOLUTIONS}
    for src in ALL_RESOLUTIONS:
        for dst in ALL_RESOLUTIONS:
            if src.divides(dst):
                assert rollup(naive[src], dst) == naive[dst], (src, dst)
                assert rollup(list(reversed(naive[src])), dst) == naive[dst]


@settings(max_examples=150, deadline=None)
@given(trade_streams())
def test_backfill_matches_naive(trades: list[Trade]) -> None:
    ts = np.array([t for t, _, _ in trades], dtype=np.int64)
    price = np.array([p for _, p, _ in trades], dtype=np.int64)
    size = np.array([s for _, _, s in trades], dtype=np.int32)
    out = backfill(ts, price, size)
    assert set(out) == set(ALL_RESOLUTIONS)
    for res in ALL_RESOLUTIONS:
        assert out[res].to_bars("X", res) == naive_bars(trades, res), res


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_all_paths_agree_on_a_long_seeded_stream(seed: int) -> None:
    trades = seeded_stream(seed, 20_000)
    grace = 120_000
    kept, rejected = accepted_by_grace(trades, grace)
    assert 0 < rejected < len(trades)
    agg, online = run_online(trades, grace)
    assert agg.rejected == rejected
    arrays = backfill(
        np.array([t[0] for t in kept]), np.array([t[1] for t in kept]), [t[2] for t in kept]
    )
    for res in ALL_RESOLUTIONS:
        expected = naive_bars(kept, res)
        assert online[res] == expected
        assert arrays[res].to_bars("X", res) == expected
        assert rollup(online[Resolution.M1], res) == expected


@settings(max_examples=100, deadline=None)
@given(trade_streams(allow_late=False))
def test_forming_bars_match_naive_before_close(trades: list[Trade]) -> None:
    agg = CandleAggregator(grace_ms=0)
    for ts, price, size in trades:
        agg.add("X", price, size, ts)
    wm = agg.watermark("X")
    assert wm is not None
    for res in ALL_RESOLUTIONS:
        bucket = res.bucket_start(wm)
        expected = [b for b in naive_bars(trades, res) if b.ts == bucket]
        got = agg.forming("X", res)
        assert (got,) == tuple(expected) if expected else got is None


# --------------------------------------------------------------------------- edge cases


def _events(agg: CandleAggregator, *ticks: Trade, symbol: str = "X") -> list[tuple[str, Bar]]:
    out: list[tuple[str, Bar]] = []
    for ts, p, s in ticks:
        out.extend((e.kind.value, e.bar) for e in agg.add(symbol, p, s, ts))
    return out


MON = datetime_to_ms(datetime(2024, 1, 8, tzinfo=UTC))  # a Monday 00:00 UTC


def test_bucket_boundary_closes_on_the_exact_millisecond() -> None:
    agg = CandleAggregator(grace_ms=0)
    assert _events(agg, (MON - 60_000, 10, 1), (MON - 1, 12, 2)) == []
    ev = _events(agg, (MON, 11, 3))
    # Sunday's last minute closes every resolution: M1 .. W1.
    assert [(k, b.resolution) for k, b in ev] == [("CLOSED", r) for r in ALL_RESOLUTIONS]
    for _, bar in ev:
        assert bar.ts == bar.resolution.bucket_start(MON - 1)
        assert (bar.open, bar.high, bar.low, bar.close, bar.volume, bar.trades) == (
            10,
            12,
            10,
            12,
            3,
            2,
        )
    assert agg.forming("X", Resolution.W1) == Bar("X", Resolution.W1, MON, 11, 11, 11, 11, 3, 1)


def test_gap_produces_no_bars_for_empty_intervals() -> None:
    agg = CandleAggregator(grace_ms=0)
    _events(agg, (MON + 5_000, 100, 1))
    ev = _events(agg, (MON + 3 * 3_600_000 + 10, 105, 1))  # three hours later
    closed = {(b.resolution, b.ts) for _, b in ev}
    # Only the buckets holding the first trade close; nothing is emitted for the gap.
    assert closed == {
        (Resolution.M1, MON),
        (Resolution.M5, MON),
        (Resolution.M15, MON),
        (Resolution.M30, MON),
        (Resolution.H1, MON),
    }


def test_late_tick_within_grace_corrects_closed_bar_and_can_become_open() -> None:
    agg = CandleAggregator(grace_ms=30_000)
    _events(agg, (MON + 50_000, 100, 1), (MON + 59_000, 101, 1))
    ev = _events(agg, (MON + 61_000, 102, 1))
    assert ("CLOSED", Bar("X", Resolution.M1, MON, 100, 101, 100, 101, 2, 2)) in ev
    # Late by 21 s (within 30 s grace), earlier than the bar's first trade: new open.
    ev = _events(agg, (MON + 40_000, 90, 5))
    assert ev == [("CORRECTION", Bar("X", Resolution.M1, MON, 90, 101, 90, 101, 7, 3))]
    assert agg.corrections == 1 and agg.rejected == 0
    # The coarser bars are still forming and include it silently.
    assert agg.forming("X", Resolution.M5) == Bar("X", Resolution.M5, MON, 90, 102, 90, 102, 8, 4)
    # 31 s behind the watermark: outside grace, rejected and counted.
    assert _events(agg, (MON + 30_000, 1, 1)) == []
    assert agg.rejected == 1
    assert agg.forming("X", Resolution.M5) == Bar("X", Resolution.M5, MON, 90, 102, 90, 102, 8, 4)


def test_grace_edge_inside_the_forming_bar() -> None:
    agg = CandleAggregator(grace_ms=1_000)
    _events(agg, (MON + 10_000, 100, 1), (MON + 9_000, 50, 1), (MON + 8_999, 1, 1))
    assert agg.rejected == 1
    assert agg.forming("X", Resolution.M1) == Bar("X", Resolution.M1, MON, 50, 100, 50, 100, 2, 2)


def test_late_tick_at_the_grace_edge_in_the_last_ms_of_a_closed_bar() -> None:
    agg = CandleAggregator(grace_ms=10_000)
    _events(agg, (MON + 1_000, 100, 1), (MON + 69_999, 105, 1))
    # Exactly grace behind the watermark and the bar's last millisecond: still kept.
    ev = _events(agg, (MON + 59_999, 90, 1))
    assert ev == [("CORRECTION", Bar("X", Resolution.M1, MON, 100, 100, 90, 90, 2, 2))]


def test_closed_bars_kept_for_corrections_stay_bounded() -> None:
    agg = CandleAggregator(grace_ms=90_000)
    for ts, p, s in seeded_stream(5, 20_000):
        agg.add("X", p, s, ts)
    kept = [len(c) for c in agg._states["X"].closed]
    # At most the buckets a tick within grace can reach: 90 s spans <= 3 minutes.
    assert kept[0] <= 3 and all(k <= 2 for k in kept[1:])


def test_late_tick_with_the_closing_time_becomes_the_close() -> None:
    agg = CandleAggregator(grace_ms=60_000)
    _events(agg, (MON + 1_000, 100, 1), (MON + 59_000, 101, 1), (MON + 61_000, 102, 1))
    # Same ts as the closed bar's last trade but arrived later: it is the new close.
    ev = _events(agg, (MON + 59_000, 99, 1))
    assert ev[0] == ("CORRECTION", Bar("X", Resolution.M1, MON, 100, 101, 99, 99, 3, 3))
    # Same ts as the bar's first trade: arrived later, so it is not the open.
    ev = _events(agg, (MON + 1_000, 98, 1))
    assert ev[0] == ("CORRECTION", Bar("X", Resolution.M1, MON, 100, 101, 98, 99, 4, 4))


def test_late_tick_into_an_empty_closed_bucket_creates_the_bar() -> None:
    agg = CandleAggregator(grace_ms=120_000)
    _events(agg, (MON + 10_000, 100, 1), (MON + 150_000, 101, 1))
    ev = _events(agg, (MON + 70_000, 99, 4))  # minute 1 closed empty
    assert ev == [("CORRECTION", Bar("X", Resolution.M1, MON + 60_000, 99, 99, 99, 99, 4, 1))]


def test_late_tick_across_week_boundary_corrects_every_resolution() -> None:
    agg = CandleAggregator(grace_ms=10_000)
    _events(agg, (MON - 2_000, 100, 1), (MON + 3_000, 200, 1))
    ev = _events(agg, (MON - 1, 150, 1))  # Sunday 23:59:59.999, arriving late
    assert [(k, b.resolution) for k, b in ev] == [("CORRECTION", r) for r in ALL_RESOLUTIONS]
    for _, bar in ev:
        assert (bar.open, bar.high, bar.close, bar.trades) == (100, 150, 150, 2)


def test_equal_timestamps_keep_arrival_order() -> None:
    trades = [(MON + 5, 10, 1), (MON + 5, 20, 1), (MON + 1, 30, 1), (MON + 1, 40, 1)]
    agg = CandleAggregator(grace_ms=1_000)
    _events(agg, *trades)
    assert agg.forming("X", Resolution.M1) == Bar("X", Resolution.M1, MON, 30, 40, 10, 20, 4, 4)
    (bar,) = backfill(*map(np.array, zip(*trades, strict=True)))[Resolution.M1].to_bars(
        "X", Resolution.M1
    )
    assert bar == agg.forming("X", Resolution.M1)


def test_advance_closes_quiet_symbols_and_moves_the_grace_window() -> None:
    agg = CandleAggregator(grace_ms=5_000)
    agg.add_tick(Tick("A", 100, 1, MON + 1_000, "test"))
    agg.add_tick(Tick("B", 200, 1, MON + 2_000, "test"))
    assert agg.advance(MON + 59_999) == []
    ev = agg.advance(MON + 60_000)
    assert {(e.bar.symbol, e.bar.resolution) for e in ev} == {
        ("A", Resolution.M1),
        ("B", Resolution.M1),
    }
    assert agg.forming("A", Resolution.M1) is None
    assert agg.forming("A", Resolution.H1) == Bar("A", Resolution.H1, MON, 100, 100, 100, 100, 1, 1)
    # Exactly at the grace edge of the clock: a late correction; beyond it: rejected.
    late = agg.add("A", 101, 1, MON + 55_000)
    assert [e.kind for e in late] == [BarEventKind.CORRECTION]
    assert not agg.add("A", 101, 1, MON + 54_999)
    assert agg.rejected == 1
    # A tick in the new (empty so far) minute, older than the clock, starts a bar.
    assert agg.advance(MON + 62_000) == []
    assert not agg.add("A", 103, 2, MON + 60_500)
    assert agg.forming("A", Resolution.M1) == Bar(
        "A", Resolution.M1, MON + 60_000, 103, 103, 103, 103, 2, 1
    )
    assert agg.advance(MON, symbol="B") == []  # the clock never goes back
    assert sorted(agg.symbols) == ["A", "B"]
    agg.drop("A")
    assert agg.forming("A", Resolution.M1) is None


def test_symbols_are_independent() -> None:
    rng = random.Random(7)
    streams = {s: seeded_stream(rng.randrange(10**6), 3_000) for s in ("A", "B", "C")}
    agg = CandleAggregator(grace_ms=60_000)
    # Interleave the symbols at random, keeping each symbol's own arrival order.
    labels = [s for s, ts in streams.items() for _ in ts]
    rng.shuffle(labels)
    order = {s: iter(ts) for s, ts in streams.items()}
    latest: dict[tuple[str, Resolution, int], Bar] = {}
    for s in labels:
        ts, p, sz = next(order[s])
        for ev in agg.add(s, p, sz, ts):
            latest[(s, ev.bar.resolution, ev.bar.ts)] = ev.bar
    for ev in agg.advance(BASE + 100 * 86_400_000):
        latest[(ev.bar.symbol, ev.bar.resolution, ev.bar.ts)] = ev.bar
    for s, stream in streams.items():
        kept, _ = accepted_by_grace(stream, 60_000)
        for res in ALL_RESOLUTIONS:
            got = sorted(
                (b for (sym, r, _), b in latest.items() if sym == s and r is res),
                key=lambda b: b.ts,
            )
            assert got == naive_bars(kept, res, symbol=s)


# --------------------------------------------------------------------------- validation


def test_rollup_validation() -> None:
    m5 = Bar("X", Resolution.M5, MON, 1, 1, 1, 1, 1, 1)
    assert rollup([], Resolution.H1) == []
    with pytest.raises(DomainError) as e:
        rollup([m5], Resolution.M1)
    assert e.value.code == "INVALID_RESOLUTION"
    with pytest.raises(DomainError):
        rollup([m5, Bar("Y", Resolution.M5, MON + 300_000, 1, 1, 1, 1, 1, 1)], Resolution.H1)
    with pytest.raises(DomainError):
        rollup([m5, m5], Resolution.H1)
    with pytest.raises(DomainError):
        rollup([Bar("X", Resolution.M5, MON + 60_000, 1, 1, 1, 1, 1, 1)], Resolution.H1)


def test_backfill_validation_and_empty() -> None:
    out = backfill([], [], [])
    assert all(len(v) == 0 for v in out.values()) and set(out) == set(ALL_RESOLUTIONS)
    with pytest.raises(DomainError):
        backfill([1, 2], [1.5, 2.5], [1, 1])
    with pytest.raises(DomainError):
        backfill([1, 2], [1], [1, 1])
    with pytest.raises(DomainError):
        CandleAggregator(grace_ms=-1)


# --------------------------------------------------------------------------- tick helpers


@given(st.datetimes(timezones=st.just(UTC)))
def test_ms_datetime_round_trip(dt: datetime) -> None:
    ms = datetime_to_ms(dt)
    assert ms_to_datetime(ms) == dt.replace(microsecond=dt.microsecond // 1000 * 1000)
    assert ms_to_datetime(ms).tzinfo is UTC
    assert ms == (dt - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)


def test_datetime_to_ms_refuses_naive_and_converts_zones() -> None:
    with pytest.raises(DomainError):
        datetime_to_ms(datetime(2024, 1, 1))
    prague = timezone(timedelta(hours=1))
    assert datetime_to_ms(datetime(2024, 1, 1, 1, tzinfo=prague)) == datetime_to_ms(
        datetime(2024, 1, 1, tzinfo=UTC)
    )


def test_price_minor_units() -> None:
    assert price_to_minor("1.08500", 5) == 108_500
    assert price_to_minor(Decimal("65000.1"), 2) == 6_500_010
    assert price_to_minor(3, 2) == 300
    assert minor_to_price(108_500, 5) == Decimal("1.08500")
    with pytest.raises(DomainError) as e:
        price_to_minor("1.085001", 5)
    assert e.value.code == "INVALID_TICK_SIZE"
    assert price_to_minor("1.085005", 5, exact=False) == 108_500  # half-even
    assert price_to_minor("1.085015", 5, exact=False) == 108_502
    for bad in ("abc", "NaN", "Infinity"):
        with pytest.raises(DomainError):
            price_to_minor(bad, 2)


class _ListFeed:
    """The smallest thing that satisfies the Feed protocol."""

    name = "list"

    def __init__(self, ticks: list[Tick]) -> None:
        self._ticks = ticks
        self.running = False

    async def start(self) -> None:
        self.running = True

    async def stop(self) -> None:
        self.running = False

    async def __aiter__(self) -> AsyncIterator[Tick]:
        for t in self._ticks:
            if not self.running:
                return
            yield t


async def test_feed_protocol_drives_the_aggregator() -> None:
    feed = _ListFeed([Tick("X", 100 + i, 1, MON + i * 30_000, "list") for i in range(5)])
    assert isinstance(feed, Feed)
    await feed.start()
    agg = CandleAggregator()
    events = [e for t in [t async for t in feed] for e in agg.add_tick(t)]
    await feed.stop()
    assert [e.bar.ts for e in events] == [MON, MON + 60_000]
    assert events[0].bar == Bar("X", Resolution.M1, MON, 100, 101, 100, 101, 2, 2)
