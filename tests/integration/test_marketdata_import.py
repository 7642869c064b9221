"""``tradegraph import-candles``: every row validated, line numbers, all or nothing."""

from __future__ import annotations

import asyncio
from pathlib import Path

from typer.testing import CliRunner

from tradegraph.cli import cli
from tradegraph.db import Database
from tradegraph.marketdata.candles import Resolution
from tradegraph.marketdata.store import CandleStore

GOOD = """time,open,high,low,close,volume,trades
2024-06-03T00:00:00Z,1.08500,1.08520,1.08490,1.08510,12,4
1717372860,1.08510,1.08530,1.08500,1.08525,3,2

2024-06-03T00:02:00+00:00,1.08525,1.08525,1.08400,1.08401,0,1
2024-06-03T00:05:00Z,1.08401,1.08600,1.08401,1.08600,7,3
"""


def run(settings, tmp_path: Path, text: str, *args: str):
    path = tmp_path / "bars.csv"
    path.write_text(text)
    env = {
        "TRADEGRAPH_DATABASE_URL": settings.database_url,
        "TRADEGRAPH_DATA_DIR": str(tmp_path),
        "TRADEGRAPH_ENV": "test",
    }
    argv = ["import-candles", str(path), "--symbol", "EURUSD", "--resolution", "M1", *args]
    return CliRunner().invoke(cli, argv, env=env)


def stored(settings, resolution: Resolution) -> list[tuple[int, ...]]:
    async def read() -> list[tuple[int, ...]]:
        db = Database(settings.database_url)
        try:
            bars = await CandleStore(db).bars("EURUSD", resolution, limit=100)
        finally:
            await db.dispose()
        return [(b.ts, b.open, b.high, b.low, b.close, b.volume, b.trades) for b in bars]

    return asyncio.run(read())


T = 1_717_372_800_000  # 2024-06-03 00:00 UTC, a Monday


def test_import_validates_and_rebuilds_coarser_resolutions(settings, tmp_path):
    result = run(settings, tmp_path, GOOD)
    assert result.exit_code == 0, result.output
    assert "imported 4 M1 bars for EURUSD" in result.output
    assert stored(settings, Resolution.M1) == [
        (T, 108_500, 108_520, 108_490, 108_510, 12, 4),
        (T + 60_000, 108_510, 108_530, 108_500, 108_525, 3, 2),
        (T + 120_000, 108_525, 108_525, 108_400, 108_401, 0, 1),
        (T + 300_000, 108_401, 108_600, 108_401, 108_600, 7, 3),
    ]
    assert stored(settings, Resolution.M5) == [
        (T, 108_500, 108_530, 108_400, 108_401, 15, 7),
        (T + 300_000, 108_401, 108_600, 108_401, 108_600, 7, 3),
    ]
    assert stored(settings, Resolution.W1) == [(T, 108_500, 108_600, 108_400, 108_600, 22, 10)]

    # importing again replaces bars at the same times (idempotent), coarser follow
    again = GOOD.replace("1.08600,7,3", "1.08600,9,3")
    assert run(settings, tmp_path, again).exit_code == 0
    assert stored(settings, Resolution.D1) == [(T, 108_500, 108_600, 108_400, 108_600, 24, 10)]


def test_every_bad_row_is_reported_and_nothing_is_written(settings, tmp_path):
    bad = """time,open,high,low,close,volume
2024-06-03T00:00:00Z,1.08500,1.08520,1.08490,1.08510,12
2024-06-03T00:00:30Z,1.08500,1.08520,1.08490,1.08510,12
2024-06-03T00:02:00,1.08500,1.08520,1.08490,1.08510,12
2024-06-03T00:03:00Z,1.085001,1.08520,1.08490,1.08510,12
2024-06-03T00:04:00Z,1.08500,1.08400,1.08490,1.08510,12
2024-06-03T00:05:00Z,1.08500,1.08520,1.08490,1.08510,-1
2024-06-03T00:00:00Z,1.08500,1.08520,1.08490,1.08510,12
2024-06-03T00:07:00Z,1.08500,1.08520
2099-06-01T00:00:00Z,1.08500,1.08520,1.08490,1.08510,12
2024-06-03T00:09:00Z,0,1.08520,0,1.08510,12
"""
    result = run(settings, tmp_path, bad)
    assert result.exit_code == 1
    out = result.output
    assert "nothing imported, 9 problem(s)" in out
    for line, text in (
        (3, "not the start of a M1 bar"),
        (4, "no timezone"),
        (5, "more than 5 decimal places"),
        (6, "low <= open, close <= high"),
        (7, "must not be negative"),
        (8, "time repeats line 2"),
        (9, "expected 6 fields, found 3"),
        (10, "has not closed yet"),
        (11, "greater than zero"),
    ):
        assert f"line {line}: " in out and text in out, (line, text, out)
    assert "line 2:" not in out
    assert stored(settings, Resolution.M1) == []  # the good row was not committed either


def test_header_unknown_symbol_and_resolution(settings, tmp_path):
    result = run(settings, tmp_path, "time,open,high,low,close\n")
    assert result.exit_code == 1 and "line 1: missing column(s) volume" in result.output
    result = run(settings, tmp_path, "")
    assert result.exit_code == 1 and "line 1: the file is empty" in result.output
    result = run(settings, tmp_path, GOOD, "--resolution", "M2")
    assert result.exit_code == 1 and "unknown resolution" in result.output
    path = tmp_path / "x.csv"
    path.write_text(GOOD)
    env = {"TRADEGRAPH_DATABASE_URL": settings.database_url, "TRADEGRAPH_ENV": "test"}
    result = CliRunner().invoke(
        cli, ["import-candles", str(path), "--symbol", "NOPE", "--resolution", "M1"], env=env
    )
    assert result.exit_code == 1 and "unknown instrument" in result.output
