"""The candles table: closed OHLCV bars of every symbol and resolution.

Keyed by ``(symbol, resolution, ts)``, so the primary key's b-tree is exactly the index a
chart needs (one symbol and resolution, a time range, newest first) and a bar is
upserted in place when a late tick corrects it. ``ts`` is the bar's open time as integer
epoch milliseconds (UTC by definition), the unit the aggregator and the ticks use:
integer range scans are the cheapest there are and no timezone can be lost. Prices are
integer minor units of the instrument (``price_decimals``), volume in quantity units.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Enum, String
from sqlalchemy.orm import Mapped, mapped_column

from tradegraph.db import Base
from tradegraph.marketdata.candles import Resolution


class Candle(Base):
    """One closed bar (forming bars live in memory, see ``MarketDataService``)."""

    __tablename__ = "candles"

    symbol: Mapped[str] = mapped_column(String(24), primary_key=True)
    resolution: Mapped[Resolution] = mapped_column(
        Enum(Resolution, name="candle_resolution", native_enum=False, length=3),
        primary_key=True,
    )
    ts: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    open: Mapped[int] = mapped_column(BigInteger)
    high: Mapped[int] = mapped_column(BigInteger)
    low: Mapped[int] = mapped_column(BigInteger)
    close: Mapped[int] = mapped_column(BigInteger)
    volume: Mapped[int] = mapped_column(BigInteger)
    trades: Mapped[int] = mapped_column(BigInteger)
