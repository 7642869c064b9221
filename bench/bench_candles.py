"""Candle throughput: ticks per second into all eight resolutions.

Prints one JSON line. ``online_ticks_per_s`` runs :class:`CandleAggregator` tick by tick
over several symbols (closing bars as time moves on); ``vectorized_ticks_per_s`` runs
:func:`backfill` over one large array. Both take the best of a few repeats because the
benchmark machines are shared and noisy. Targets: online >= 200k/s, vectorized >= 1M/s.

    python bench/bench_candles.py [--ticks N] [--repeat R]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from tradegraph.marketdata.candles import ALL_RESOLUTIONS, CandleAggregator, backfill

START_MS = 1_704_067_200_000  # 2024-01-01 00:00 UTC


def make_ticks(n: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A random walk with ~20 ticks/s per symbol, so every resolution closes bars."""
    rng = np.random.default_rng(seed)
    ts = START_MS + np.cumsum(rng.integers(0, 100, n))
    price = 1_000_000 + np.cumsum(rng.integers(-5, 6, n))
    size = rng.integers(1, 1_000, n)
    return ts.astype(np.int64), price.astype(np.int64), size.astype(np.int64)


def bench_online(n: int, repeat: int) -> tuple[float, int, int]:
    ts, price, size = make_ticks(n)
    # 1% of ticks arrive up to 3 s late (grace is 2 s): corrections and rejections too.
    rng = np.random.default_rng(3)
    late = rng.random(n) < 0.01
    ts = ts - late * rng.integers(0, 3_000, n)
    symbols = ["EURUSD", "BTCUSD", "XAUUSD", "US30"]
    sym = [symbols[i % len(symbols)] for i in range(n)]
    rows = list(zip(sym, price.tolist(), size.tolist(), ts.tolist(), strict=True))
    best = float("inf")
    events = rejected = 0
    for _ in range(repeat):
        agg = CandleAggregator(grace_ms=2_000)
        add = agg.add
        t0 = time.perf_counter()
        events = 0
        for s, p, q, t in rows:
            ev = add(s, p, q, t)
            if ev:
                events += len(ev)
        best = min(best, time.perf_counter() - t0)
        rejected = agg.rejected
        for s in symbols:  # sanity: every resolution is being produced
            for res in ALL_RESOLUTIONS:
                assert agg.forming(s, res) is not None
    return n / best, events, rejected


def bench_vectorized(n: int, repeat: int, shuffled: bool = False) -> tuple[float, int]:
    ts, price, size = make_ticks(n, seed=2)
    if shuffled:  # unsorted input pays for a stable argsort
        perm = np.random.default_rng(4).permutation(n)
        ts, price, size = ts[perm], price[perm], size[perm]
    best = float("inf")
    bars = 0
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = backfill(ts, price, size)
        best = min(best, time.perf_counter() - t0)
        bars = sum(len(v) for v in out.values())
    return n / best, bars


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--ticks", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    online, events, rejected = bench_online(args.ticks, args.repeat)
    vectorized, bars = bench_vectorized(args.ticks * 4, args.repeat)
    unsorted, _ = bench_vectorized(args.ticks * 4, args.repeat, shuffled=True)
    print(
        json.dumps(
            {
                "bench": "candles",
                "resolutions": len(ALL_RESOLUTIONS),
                "online_ticks": args.ticks,
                "online_ticks_per_s": round(online),
                "online_events": events,
                "online_rejected": rejected,
                "vectorized_ticks": args.ticks * 4,
                "vectorized_ticks_per_s": round(vectorized),
                "vectorized_bars": bars,
                "vectorized_unsorted_ticks_per_s": round(unsorted),
                "targets": {"online_ticks_per_s": 200_000, "vectorized_ticks_per_s": 1_000_000},
            }
        )
    )


if __name__ == "__main__":
    main()
