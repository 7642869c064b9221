"""``candles`` query latency: 5,000 M1 bars out of a year of history in PostgreSQL.

Creates a scratch PostgreSQL database, migrates it, stores one year of M1 history for
one symbol (ticks from a seeded random walk, cut into all eight resolutions by the
vectorized :func:`backfill` and loaded with COPY), then asks the real app (in-process,
ASGI) for the latest 5,000 M1 bars again and again. *Server time* is measured by an
ASGI wrapper around the app: from the request entering the app to the last byte of the
response leaving it, so the HTTP client's own work is not counted. The regular
graphql-core execution (forced with ``@include(if: true)``, which the fast path does not
take) is timed too, for comparison. Target: p50 under 20 ms. Prints one JSON line.

    python bench/bench_candles_query.py [--requests N] [--regular-requests N]

PostgreSQL: ``BENCH_PG_ADMIN_DSN`` (default postgresql://postgres@127.0.0.1:5432/postgres).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import numpy as np

from tradegraph.app import create_app
from tradegraph.config import Settings
from tradegraph.db import Database
from tradegraph.exchange.reference import ensure_reference
from tradegraph.marketdata.candles import Resolution, backfill
from tradegraph.marketdata.store import CandleStore
from tradegraph.migrate import upgrade
from tradegraph.services import Services

PG_ADMIN = os.environ.get("BENCH_PG_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
SYMBOL = "EURUSD"  # a SIM instrument: 5 price decimals
YEAR_S = 365 * 86_400
QUERY = """query Candles($s: String!, $n: Int) {
  candles(symbol: $s, resolution: M1, countBack: $n) {
    time open high low close volume trades closed } }"""
REGULAR = QUERY.replace("countBack: $n)", "countBack: $n) @include(if: true)")


def year_of_ticks(end_ms: int, seed: int = 11) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """~6.3M ticks (one every 5 s on average) of a random walk around 1.08500."""
    rng = np.random.default_rng(seed)
    n = YEAR_S // 5
    gaps = rng.integers(1, 10_000, n)
    cum = np.cumsum(gaps)
    ts = end_ms - 1 - (cum[-1] - cum)  # the last tick just before end_ms
    keep = ts >= end_ms - YEAR_S * 1000  # exactly one year
    price = 108_500 + np.cumsum(rng.integers(-2, 3, n))
    price = np.maximum(price, 50_000)
    size = rng.integers(1, 1_000, n)
    return (
        ts[keep].astype(np.int64),
        price[keep].astype(np.int64),
        size[keep].astype(np.int64),
    )


class ServerTimer:
    """ASGI wrapper: per-request time inside the app (request in -> response out)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.samples: list[float] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()

        async def timed_send(message: Any) -> None:
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body"):
                self.samples.append(time.perf_counter() - start)

        await self.app(scope, receive, timed_send)


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 2)


async def run(requests: int, regular_requests: int) -> dict[str, Any]:
    name = f"tg_bench_candles_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    admin = await asyncpg.connect(PG_ADMIN)
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    host = PG_ADMIN.split("@", 1)[1].rsplit("/", 1)[0]
    user = PG_ADMIN.split("://", 1)[1].split("@", 1)[0]
    url = f"postgresql+asyncpg://{user}@{host}/{name}"
    try:
        db = Database(url)
        await upgrade(db)
        await ensure_reference(db)
        now_ms = int(time.time() * 1000)
        ts, price, size = year_of_ticks(Resolution.M1.bucket_start(now_ms))
        t0 = time.perf_counter()
        bars = backfill(ts, price, size)
        backfill_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        rows = await CandleStore(db).load_all(SYMBOL, bars)
        load_s = time.perf_counter() - t0
        await db.dispose()
        admin = await asyncpg.connect(url.replace("postgresql+asyncpg", "postgresql"))
        await admin.execute("VACUUM ANALYZE candles")  # the steady state autovacuum reaches
        await admin.close()

        with tempfile.TemporaryDirectory() as tmp:
            settings = Settings(
                env="test",
                data_dir=Path(tmp),
                database_url=url,
                jwt_secret="b" * 40,
                market_simulator=False,
                rate_limit_ip_per_minute=1_000_000,
                log_json=False,
                log_level="WARNING",
            )
            services = Services(settings)
            await services.start()
            try:
                timer = ServerTimer(create_app(settings, services=services))
                transport = httpx.ASGITransport(app=timer)
                async with httpx.AsyncClient(transport=transport, base_url="http://bench") as c:
                    body = {"query": QUERY, "variables": {"s": SYMBOL, "n": 5_000}}

                    async def ask(payload: dict[str, Any]) -> int:
                        r = await c.post("/graphql", json=payload)
                        data = r.json()
                        assert "errors" not in data, data
                        return len(data["data"]["candles"])

                    for _ in range(20):
                        n_bars = await ask(body)
                    assert n_bars == 5_000, n_bars
                    timer.samples.clear()
                    full_gcs = gc.get_stats()[2]["collections"]
                    for _ in range(requests):
                        await ask(body)
                    full_gcs = gc.get_stats()[2]["collections"] - full_gcs
                    fast = list(timer.samples)
                    timer.samples.clear()
                    regular = {"query": REGULAR, "variables": body["variables"]}
                    for _ in range(regular_requests):
                        assert await ask(regular) == 5_000
                    slow = list(timer.samples)
            finally:
                await services.stop()
    finally:
        admin = await asyncpg.connect(PG_ADMIN)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
    return {
        "bench": "candles_query",
        "database": "postgresql",
        "symbol": SYMBOL,
        "history_m1_bars": len(bars[Resolution.M1]),
        "stored_rows_all_resolutions": rows,
        "history_ticks": int(ts.shape[0]),
        "backfill_s": round(backfill_s, 2),
        "load_s": round(load_s, 2),
        "bars_per_query": 5_000,
        "requests": requests,
        "server_p50_ms": pct(fast, 0.50),
        "server_p99_ms": pct(fast, 0.99),
        "server_mean_ms": round(statistics.fmean(fast) * 1000, 2),
        "full_gc_collections_during_run": full_gcs,
        "regular_path_requests": regular_requests,
        "regular_path_p50_ms": pct(slow, 0.50),
        "target_p50_ms": 20,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--regular-requests", type=int, default=20)
    args = ap.parse_args()
    print(json.dumps(asyncio.run(run(args.requests, args.regular_requests))))


if __name__ == "__main__":
    main()
