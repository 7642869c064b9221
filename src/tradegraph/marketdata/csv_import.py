"""Validating a CSV of OHLCV bars for ``tradegraph import-candles`` (pure, no I/O).

Format: a header line naming the columns (any order, case-insensitive): ``time``,
``open``, ``high``, ``low``, ``close``, ``volume`` and optionally ``trades``. ``time`` is
the bar's open time, as unix seconds or ISO-8601 with a zone (``2024-06-01T00:00:00Z``),
on the resolution's grid (UTC; weeks start on Monday). Prices and volumes are decimals
that must be exact at the instrument's decimals; prices on its tick grid and positive,
``low <= open, close <= high``.

Every row is checked and every problem reported with its line number; a file with any
problem imports nothing (the caller commits only a clean file, in one transaction).
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np

from tradegraph.errors import DomainError
from tradegraph.marketdata.candles import BarArrays, Resolution
from tradegraph.marketdata.ticks import datetime_to_ms
from tradegraph.money import to_minor

__all__ = ["CsvProblems", "ParsedBars", "parse_candles_csv", "parse_resolution_name"]

REQUIRED = ("time", "open", "high", "low", "close", "volume")
OPTIONAL = ("trades",)
MAX_REPORTED = 100
_UDF_NAMES = {"1": "M1", "5": "M5", "15": "M15", "30": "M30", "60": "H1", "240": "H4"}
_UDF_NAMES |= {"1D": "D1", "D": "D1", "1W": "W1", "W": "W1"}


class CsvProblems(DomainError):
    """The file has problems; ``problems`` lists them as ``line N: ...``."""

    code = "INVALID_CSV"

    def __init__(self, problems: list[str]) -> None:
        shown = problems[:MAX_REPORTED]
        more = len(problems) - len(shown)
        text = "\n".join(shown) + (f"\n... and {more} more" if more else "")
        super().__init__(text)
        self.problems = problems


@dataclass
class ParsedBars:
    """A clean file: bars sorted by time, in integer units."""

    bars: BarArrays
    lines: dict[int, int] = field(default_factory=dict)  # ts -> line number


def parse_resolution_name(value: str) -> Resolution:
    """``M1`` .. ``W1`` (or the UDF spellings ``1`` .. ``1W``)."""
    name = value.strip().upper()
    name = _UDF_NAMES.get(name, name)
    try:
        return Resolution[name]
    except KeyError:
        raise DomainError(
            f"unknown resolution {value!r}; use one of {', '.join(r.name for r in Resolution)}",
            code="INVALID_RESOLUTION",
            field="resolution",
        ) from None


def _time(raw: str) -> int:
    text = raw.strip()
    if text.lstrip("-").isdigit():
        return int(text) * 1000
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ValueError(f"time {raw!r} is neither unix seconds nor ISO-8601") from None
    if dt.tzinfo is None:
        raise ValueError(f"time {raw!r} has no timezone (add Z for UTC)")
    return datetime_to_ms(dt)


def _units(raw: str, name: str, decimals: int, *, positive: bool) -> int:
    try:
        return to_minor(raw.strip(), decimals, field=name, allow_zero=not positive)
    except DomainError as exc:
        raise ValueError(f"{name}: {exc.message}") from None


def parse_candles_csv(
    lines: Iterable[str],
    resolution: Resolution,
    *,
    price_decimals: int,
    qty_decimals: int,
    tick: int = 1,
    now_ms: int,
) -> ParsedBars:
    """Validate every row; return the bars, or raise :class:`CsvProblems` with them all.

    ``now_ms`` rejects bars that have not closed yet (the live feed owns those).
    """
    reader = csv.reader(lines)
    problems: list[str] = []
    try:
        header = next(reader)
    except StopIteration:
        raise CsvProblems(["line 1: the file is empty (expected a header line)"]) from None
    names = [h.strip().lower() for h in header]
    unknown = [n for n in names if n not in REQUIRED + OPTIONAL]
    missing = [n for n in REQUIRED if n not in names]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if unknown or missing or duplicated:
        parts = []
        if missing:
            parts.append(f"missing column(s) {', '.join(missing)}")
        if unknown:
            parts.append(f"unknown column(s) {', '.join(unknown)}")
        if duplicated:
            parts.append(f"repeated column(s) {', '.join(duplicated)}")
        raise CsvProblems([f"line 1: {'; '.join(parts)}"])
    index = {n: i for i, n in enumerate(names)}
    closed_before = resolution.bucket_start(now_ms)
    seen: dict[int, int] = {}
    rows: list[tuple[int, int, int, int, int, int, int]] = []
    for row in reader:
        line = reader.line_num
        if not row or all(not cell.strip() for cell in row):
            continue  # blank lines are allowed
        if len(row) != len(names):
            problems.append(f"line {line}: expected {len(names)} fields, found {len(row)}")
            continue
        try:
            ts = _time(row[index["time"]])
            values = {}
            for name in ("open", "high", "low", "close"):
                values[name] = _units(row[index[name]], name, price_decimals, positive=True)
                if values[name] % tick:
                    raise ValueError(f"{name} {row[index[name]].strip()} is off the tick grid")
            volume = _units(row[index["volume"]], "volume", qty_decimals, positive=False)
            trades = 0
            if "trades" in index:
                raw = row[index["trades"]].strip()
                if not raw.isdigit():
                    raise ValueError(f"trades {raw!r} must be a whole number >= 0")
                trades = int(raw)
        except (ValueError, DomainError) as exc:
            message = exc.message if isinstance(exc, DomainError) else str(exc)
            problems.append(f"line {line}: {message}")
            continue
        o, h, lo, c = values["open"], values["high"], values["low"], values["close"]
        row_problems = []
        if resolution.bucket_start(ts) != ts:
            row_problems.append(f"time is not the start of a {resolution.name} bar")
        elif ts >= closed_before:
            row_problems.append("the bar has not closed yet")
        if lo > min(o, c) or h < max(o, c) or lo > h:
            row_problems.append("needs low <= open, close <= high")
        if ts in seen:
            row_problems.append(f"time repeats line {seen[ts]}")
        if row_problems:
            problems.append(f"line {line}: {'; '.join(row_problems)}")
            continue
        seen[ts] = line
        rows.append((ts, o, h, lo, c, volume, trades))
    if not rows and not problems:
        problems.append("line 2: no bars after the header")
    if problems:
        raise CsvProblems(problems)
    rows.sort()
    table = np.array(rows, dtype=np.int64)
    bars = BarArrays(*(np.ascontiguousarray(table[:, i]) for i in range(7)))
    return ParsedBars(bars, seen)
