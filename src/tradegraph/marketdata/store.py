"""Reading and writing candles: range queries, upserts, rollups from finer bars, bulk loads.

Only this module touches the ``candles`` table. Rules it keeps:

* A bar of a resolution coarser than M1 is always *rebuilt from the finer bars stored*
  (M5 from M1, M15 from M5, ... W1 from D1; each divides the next), never taken from one
  process's memory. So a restart in the middle of an hour, a late tick that corrects an
  old minute, or an imported history all end in the same bars as an uninterrupted run.
* Writes of one flush happen in one transaction: a reader sees all of them or none.
* Range reads return at most ``limit`` bars, always the *most recent* ones of the range
  (charts page backwards in time), in ascending time order.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
from sqlalchemy import Table, and_, delete, func, or_, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from tradegraph.db import Database
from tradegraph.marketdata.candles import ALL_RESOLUTIONS, Bar, BarArrays, Resolution, rollup
from tradegraph.marketdata.models import Candle

__all__ = ["FINER", "CandleStore", "WindowStats"]

_TABLE: Final[Table] = Candle.__table__  # type: ignore[assignment]
_C = _TABLE.c
_VALUES: Final = ("open", "high", "low", "close", "volume", "trades")
_CHUNK: Final = 2_000  # rows per executemany round trip (SQLite caps bound parameters)

_MERGE_STAGE: Final = (
    "INSERT INTO candles SELECT * FROM candles_stage ON CONFLICT (symbol, resolution, ts) "
    "DO UPDATE SET open = EXCLUDED.open, high = EXCLUDED.high, low = EXCLUDED.low, "
    "close = EXCLUDED.close, volume = EXCLUDED.volume, trades = EXCLUDED.trades"
)

#: The stored resolution each coarser one is rebuilt from (each divides the next).
FINER: Final[dict[Resolution, Resolution]] = dict(
    zip(ALL_RESOLUTIONS[1:], ALL_RESOLUTIONS[:-1], strict=True)
)

_EMPTY: Final = BarArrays(*(np.empty(0, dtype=np.int64) for _ in range(7)))
# PostgreSQL binary COPY of seven NOT NULL int8 columns: per row a field count (int16),
# then per field a length (int32, always 8) and the big-endian value.
_COPY_ROW: Final = np.dtype(
    [("n", ">i2")] + [f for i in range(7) for f in ((f"l{i}", ">i4"), (f"v{i}", ">i8"))]
)
_COPY_SIGNATURE: Final = b"PGCOPY\n\xff\r\n\x00"

_RANGE_SELECT: Final = (
    "SELECT ts, open, high, low, close, volume, trades FROM candles"
    " WHERE symbol = $1 AND resolution = $2"
)
#: (has from, has to) -> the range query; ``$n`` placeholders, limit last.
_RANGE_SQL: Final[dict[tuple[bool, bool], str]] = {
    (False, False): _RANGE_SELECT + " ORDER BY ts DESC LIMIT $3",
    (True, False): _RANGE_SELECT + " AND ts >= $3 ORDER BY ts DESC LIMIT $4",
    (False, True): _RANGE_SELECT + " AND ts < $3 ORDER BY ts DESC LIMIT $4",
    (True, True): _RANGE_SELECT + " AND ts >= $3 AND ts < $4 ORDER BY ts DESC LIMIT $5",
}


@dataclass(frozen=True, slots=True)
class WindowStats:
    """Aggregate of a symbol's M1 bars over a time window (minor units)."""

    open: int
    high: int
    low: int
    close: int
    volume: int
    trades: int
    first_ts: int
    last_ts: int

    def merge(self, bar: Bar) -> WindowStats:
        """Fold in a bar that is newer than everything in the window (the forming one)."""
        return WindowStats(
            open=self.open if self.first_ts <= bar.ts else bar.open,
            high=max(self.high, bar.high),
            low=min(self.low, bar.low),
            close=bar.close if bar.ts >= self.last_ts else self.close,
            volume=self.volume + bar.volume,
            trades=self.trades + bar.trades,
            first_ts=min(self.first_ts, bar.ts),
            last_ts=max(self.last_ts, bar.ts),
        )

    @classmethod
    def of(cls, bar: Bar) -> WindowStats:
        """The window holding just ``bar``."""
        return cls(bar.open, bar.high, bar.low, bar.close, bar.volume, bar.trades, bar.ts, bar.ts)


def _bar(symbol: str, res: Resolution, r: Sequence[int]) -> Bar:
    return Bar(symbol, res, r[0], r[1], r[2], r[3], r[4], r[5], r[6])


def _row(bar: Bar) -> dict[str, Any]:
    return {
        "symbol": bar.symbol,
        "resolution": bar.resolution,
        "ts": bar.ts,
        "open": bar.open,
        "high": bar.high,
        "low": bar.low,
        "close": bar.close,
        "volume": bar.volume,
        "trades": bar.trades,
    }


def _parse_copy(data: bytes) -> BarArrays:
    """Binary ``COPY`` output (rows newest first) -> ascending int64 columns."""
    if not data.startswith(_COPY_SIGNATURE) or len(data) < 21:
        raise ValueError("not PostgreSQL binary COPY data")
    start = 19 + int.from_bytes(data[15:19], "big")  # after the header extension
    body = data[start:-2]  # the trailer is a field count of -1
    if data[-2:] != b"\xff\xff" or len(body) % _COPY_ROW.itemsize:
        raise ValueError("truncated binary COPY data")
    table = np.frombuffer(body, dtype=_COPY_ROW)
    if table.size and (
        bool(np.any(table["n"] != 7)) or any(bool(np.any(table[f"l{i}"] != 8)) for i in range(7))
    ):
        raise ValueError("unexpected column layout in COPY data")
    return BarArrays(*(table[f"v{i}"][::-1].astype(np.int64) for i in range(7)))


class CandleStore:
    """The ``candles`` table behind a small, typed API (one instance per app)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    # ------------------------------------------------------------------------ reads

    async def columns(
        self,
        symbol: str,
        resolution: Resolution,
        *,
        from_ms: int | None,
        to_ms: int | None,
        limit: int,
    ) -> BarArrays:
        """Bars with ``from_ms <= ts < to_ms`` (either bound optional), the latest ``limit``
        of them, ascending, as int64 columns (the hot path of charts).

        On PostgreSQL the rows come as a binary ``COPY`` straight into numpy: no Python
        object per bar, so 5,000 bars cost ~3 ms and leave nothing for the garbage
        collector (per-row records made every tenth request pay a full collection).
        """
        if limit <= 0:
            return _EMPTY
        async with self.db.engine.connect() as conn:
            if conn.dialect.name == "postgresql":
                sql = _RANGE_SQL[(from_ms is not None, to_ms is not None)]
                args: list[Any] = [symbol, resolution.name]
                args += [b for b in (from_ms, to_ms) if b is not None]
                chunks: list[bytes] = []

                async def sink(chunk: bytes) -> None:
                    chunks.append(bytes(chunk))

                raw = await conn.get_raw_connection()
                driver: Any = raw.driver_connection
                await driver.copy_from_query(sql, *args, limit, output=sink, format="binary")
                return _parse_copy(b"".join(chunks))
            stmt = select(_C.ts, _C.open, _C.high, _C.low, _C.close, _C.volume, _C.trades).where(
                _C.symbol == symbol, _C.resolution == resolution
            )
            if from_ms is not None:
                stmt = stmt.where(_C.ts >= from_ms)
            if to_ms is not None:
                stmt = stmt.where(_C.ts < to_ms)
            stmt = stmt.order_by(_C.ts.desc()).limit(limit)
            rows = (await conn.execute(stmt)).all()
        if not rows:
            return _EMPTY
        table = np.array(rows, dtype=np.int64)[::-1]
        return BarArrays(*(np.ascontiguousarray(table[:, i]) for i in range(7)))

    async def bars(
        self,
        symbol: str,
        resolution: Resolution,
        *,
        from_ms: int | None = None,
        to_ms: int | None = None,
        limit: int = 5_000,
    ) -> list[Bar]:
        """Like :meth:`columns`, as :class:`Bar` objects."""
        cols = await self.columns(symbol, resolution, from_ms=from_ms, to_ms=to_ms, limit=limit)
        return cols.to_bars(symbol, resolution)

    async def latest_before(self, symbol: str, resolution: Resolution, ts_ms: int) -> int | None:
        """Open time of the newest stored bar before ``ts_ms`` (UDF ``nextTime``)."""
        async with self.db.engine.connect() as conn:
            value = await conn.scalar(
                select(func.max(_C.ts)).where(
                    _C.symbol == symbol, _C.resolution == resolution, _C.ts < ts_ms
                )
            )
        return None if value is None else int(value)

    async def last_bar(self, symbol: str, resolution: Resolution = Resolution.M1) -> Bar | None:
        """The newest stored bar, or None."""
        found = await self.bars(symbol, resolution, limit=1)
        return found[0] if found else None

    async def window_stats(self, symbols: Sequence[str], since_ms: int) -> dict[str, WindowStats]:
        """Open/high/low/close/volume/trades of each symbol's M1 bars with ``ts >= since``.

        Two queries whatever the number of symbols: one aggregate, one for the first and
        last bars' open and close.
        """
        if not symbols:
            return {}
        m1 = Resolution.M1
        agg = (
            select(
                _C.symbol,
                func.min(_C.ts),
                func.max(_C.ts),
                func.max(_C.high),
                func.min(_C.low),
                func.sum(_C.volume),
                func.sum(_C.trades),
            )
            .where(_C.symbol.in_(list(symbols)), _C.resolution == m1, _C.ts >= since_ms)
            .group_by(_C.symbol)
        )
        async with self.db.engine.connect() as conn:
            groups = (await conn.execute(agg)).all()
            if not groups:
                return {}
            ends = or_(
                *(and_(_C.symbol == g[0], _C.ts.in_([int(g[1]), int(g[2])])) for g in groups)
            )
            edge_rows = (
                await conn.execute(
                    select(_C.symbol, _C.ts, _C.open, _C.close).where(_C.resolution == m1, ends)
                )
            ).all()
        edges = {(r[0], int(r[1])): (int(r[2]), int(r[3])) for r in edge_rows}
        out: dict[str, WindowStats] = {}
        for symbol, first, last, high, low, volume, trades in groups:
            out[symbol] = WindowStats(
                open=edges[(symbol, int(first))][0],
                high=int(high),
                low=int(low),
                close=edges[(symbol, int(last))][1],
                volume=int(volume or 0),
                trades=int(trades or 0),
                first_ts=int(first),
                last_ts=int(last),
            )
        return out

    async def count(self, symbol: str, resolution: Resolution) -> int:
        """How many bars are stored (tests, import reports)."""
        async with self.db.engine.connect() as conn:
            value = await conn.scalar(
                select(func.count())
                .select_from(_TABLE)
                .where(_C.symbol == symbol, _C.resolution == resolution)
            )
        return int(value or 0)

    # ----------------------------------------------------------------------- writes

    def _insert(self) -> Any:
        dialect = postgresql if self.db.engine.dialect.name == "postgresql" else sqlite
        stmt = dialect.insert(_TABLE)
        return stmt.on_conflict_do_update(
            index_elements=["symbol", "resolution", "ts"],
            set_={c: stmt.excluded[c] for c in _VALUES},
        )

    async def _upsert(self, conn: AsyncConnection, rows: Sequence[dict[str, Any]]) -> None:
        stmt = self._insert()
        for i in range(0, len(rows), _CHUNK):
            await conn.execute(stmt, list(rows[i : i + _CHUNK]))

    async def _rebuild(
        self, conn: AsyncConnection, symbol: str, res: Resolution, start: int, end: int
    ) -> list[Bar]:
        """Recompute ``res`` bars whose buckets start in ``[start, end)`` from the finer
        stored bars; buckets left without finer bars lose their bar."""
        finer = FINER[res]
        lo = res.bucket_start(start)
        hi = res.bucket_start(end - 1) + res.ms if end > start else lo
        src = await conn.execute(
            select(_C.ts, _C.open, _C.high, _C.low, _C.close, _C.volume, _C.trades)
            .where(_C.symbol == symbol, _C.resolution == finer, _C.ts >= lo, _C.ts < hi)
            .order_by(_C.ts)
        )
        bars = rollup([_bar(symbol, finer, r) for r in src.all()], res)
        await conn.execute(
            delete(_TABLE).where(
                _C.symbol == symbol,
                _C.resolution == res,
                _C.ts >= lo,
                _C.ts < hi,
                _C.ts.not_in([b.ts for b in bars]),
            )
        )
        await self._upsert(conn, [_row(b) for b in bars])
        return bars

    async def write(
        self, m1: Iterable[Bar], buckets: Iterable[tuple[str, Resolution, int]]
    ) -> list[Bar]:
        """One flush, one transaction: upsert M1 bars, then rebuild coarser buckets.

        ``buckets`` are ``(symbol, resolution, bucket start)`` of coarser bars that closed
        or changed; they are rebuilt finest first, so each reads finer bars that are
        already up to date. Returns every bar written (M1 and rebuilt), for publishing.
        """
        m1_bars = list(m1)
        order = {r: i for i, r in enumerate(ALL_RESOLUTIONS)}
        todo = sorted(set(buckets), key=lambda b: (order[b[1]], b[0], b[2]))
        written: list[Bar] = []
        async with self.db.engine.begin() as conn:
            if m1_bars:
                await self._upsert(conn, [_row(b) for b in m1_bars])
            for symbol, res, start in todo:
                written.extend(await self._rebuild(conn, symbol, res, start, start + 1))
        return [*m1_bars, *written]

    async def rebuild_since(self, symbol: str, now_ms: int) -> int:
        """Bring every coarser resolution up to date with the finer bars stored.

        From each resolution's newest stored bar (or the earliest finer bar when it has
        none) up to the bucket forming at ``now_ms``: what a restart needs when bars
        closed while nothing was running. Returns how many bars were written.
        """
        written = 0
        async with self.db.engine.begin() as conn:
            for res in ALL_RESOLUTIONS[1:]:
                finer = FINER[res]
                last = await conn.scalar(
                    select(func.max(_C.ts)).where(_C.symbol == symbol, _C.resolution == res)
                )
                start = last
                if start is None:
                    start = await conn.scalar(
                        select(func.min(_C.ts)).where(_C.symbol == symbol, _C.resolution == finer)
                    )
                end = res.bucket_start(now_ms)
                if start is None or int(start) >= end:
                    continue
                written += len(await self._rebuild(conn, symbol, res, int(start), end))
        return written

    async def forming_base(self, symbol: str, now_ms: int) -> dict[Resolution, Bar]:
        """Stored bars that belong to the buckets forming at ``now_ms``, rolled up.

        For each coarser resolution: its finer bars stored in the current bucket,
        folded (recursively, so W1 = this week's D1 bars + today's H4 bars + ...). The
        live aggregator only knows what happened since it started; this is the part of
        each forming bar from before that.
        """
        m1_start = Resolution.M1.bucket_start(now_ms)
        conds = []
        for res in ALL_RESOLUTIONS[1:]:
            finer = FINER[res]
            lo = res.bucket_start(now_ms)
            hi = finer.bucket_start(now_ms) if finer is not Resolution.M1 else m1_start
            conds.append(and_(_C.resolution == finer, _C.ts >= lo, _C.ts < hi))
        async with self.db.engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(
                        _C.resolution,
                        _C.ts,
                        _C.open,
                        _C.high,
                        _C.low,
                        _C.close,
                        _C.volume,
                        _C.trades,
                    )
                    .where(_C.symbol == symbol, or_(*conds))
                    .order_by(_C.ts)
                )
            ).all()
        by_res: dict[Resolution, list[Bar]] = {}
        for r in rows:
            res = r[0]
            by_res.setdefault(res, []).append(_bar(symbol, res, r[1:]))
        base: dict[Resolution, Bar] = {}
        for res in ALL_RESOLUTIONS[1:]:
            finer = FINER[res]
            parts = list(by_res.get(finer, []))
            lower = base.get(finer)
            if lower is not None:
                parts.append(lower)
            if parts:
                (bar,) = rollup(parts, res)
                base[res] = bar
        return base

    async def import_arrays(
        self, symbol: str, resolution: Resolution, bars: BarArrays
    ) -> dict[Resolution, int]:
        """Store ``bars`` and rebuild every coarser resolution over their range.

        All or nothing: one transaction. Bars of ``resolution`` at the same times are
        replaced. Returns the number of bars written per resolution.
        """
        n = len(bars)
        if n == 0:
            return {}
        counts: dict[Resolution, int] = {resolution: n}
        async with self.db.engine.begin() as conn:
            await self._bulk_upsert(conn, symbol, resolution, bars)
            lo, hi = int(bars.ts.min()), int(bars.ts.max()) + 1
            for res in ALL_RESOLUTIONS:
                if res.ms <= resolution.ms:
                    continue
                counts[res] = len(await self._rebuild(conn, symbol, res, lo, hi))
        return counts

    async def load_all(self, symbol: str, bars: dict[Resolution, BarArrays]) -> int:
        """Store precomputed bars of several resolutions (e.g. :func:`backfill`'s output,
        already consistent with each other) in one transaction; returns rows written."""
        written = 0
        async with self.db.engine.begin() as conn:
            for res, arrays in bars.items():
                if len(arrays):
                    await self._bulk_upsert(conn, symbol, res, arrays)
                    written += len(arrays)
        return written

    async def _bulk_upsert(
        self, conn: AsyncConnection, symbol: str, resolution: Resolution, bars: BarArrays
    ) -> None:
        cols = (bars.ts, bars.open, bars.high, bars.low, bars.close, bars.volume, bars.trades)
        lists = [c.tolist() for c in cols]
        if conn.dialect.name == "postgresql":
            # COPY into a temporary table, then one INSERT ... ON CONFLICT: an order of
            # magnitude faster than row inserts for a year of minutes.
            # The asyncpg adapter opens its transaction lazily, on the first statement:
            # run one through it, so the COPY below is inside the same transaction.
            await conn.exec_driver_sql("SELECT 1")
            raw = await conn.get_raw_connection()
            driver: Any = raw.driver_connection
            if not driver.is_in_transaction():
                raise RuntimeError("bulk load must run inside a transaction")
            await driver.execute(
                "CREATE TEMP TABLE IF NOT EXISTS candles_stage "
                "(LIKE candles INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
            )
            records = [(symbol, resolution.name, *vals) for vals in zip(*lists, strict=True)]
            await driver.copy_records_to_table(
                "candles_stage",
                records=records,
                columns=["symbol", "resolution", "ts", *_VALUES],
            )
            await driver.execute(_MERGE_STAGE)
            await driver.execute("DELETE FROM candles_stage")
            return
        rows = [
            {
                "symbol": symbol,
                "resolution": resolution,
                "ts": t,
                "open": o,
                "high": h,
                "low": lo,
                "close": c,
                "volume": v,
                "trades": n,
            }
            for t, o, h, lo, c, v, n in zip(*lists, strict=True)
        ]
        await self._upsert(conn, rows)
