"""Reference data: the assets and instruments of the demo exchange (idempotent seed)."""

from __future__ import annotations

from sqlalchemy import select

from tradegraph.db import Database
from tradegraph.exchange import models as m

# Decimals are chosen so price x quantity is exact in the quote asset:
# USD has 6 decimals >= price decimals (2) + quantity decimals (4).
ASSETS: tuple[tuple[str, str, int], ...] = (
    ("USD", "US Dollar", 6),
    ("BTC", "Bitcoin", 8),
    ("ETH", "Ether", 8),
    ("SOL", "Solana", 8),
)

# symbol, base, quote, price decimals, qty decimals, tick, lot, min notional (USD units)
INSTRUMENTS: tuple[tuple[str, str, str, int, int, int, int, int], ...] = (
    ("BTC-USD", "BTC", "USD", 2, 4, 1, 1, 1_000_000),
    ("ETH-USD", "ETH", "USD", 2, 4, 1, 1, 1_000_000),
    ("SOL-USD", "SOL", "USD", 2, 2, 1, 1, 1_000_000),
)
MAKER_FEE_BPS = 10
TAKER_FEE_BPS = 20


async def ensure_reference(db: Database) -> list[str]:
    """Insert missing assets and instruments; return what was added."""
    added: list[str] = []
    async with db.session() as session:
        have_assets = set(await session.scalars(select(m.Asset.code)))
        for code, name, decimals in ASSETS:
            if code not in have_assets:
                session.add(m.Asset(code=code, name=name, decimals=decimals))
                added.append(code)
        await session.flush()
        have = set(await session.scalars(select(m.Instrument.symbol)))
        for symbol, base, quote, pd, qd, tick, lot, min_notional in INSTRUMENTS:
            if symbol in have:
                continue
            session.add(
                m.Instrument(
                    symbol=symbol,
                    base_asset=base,
                    quote_asset=quote,
                    venue=m.Venue.CLOB,
                    price_decimals=pd,
                    qty_decimals=qd,
                    tick=tick,
                    lot=lot,
                    min_qty=lot,
                    min_notional=min_notional,
                    maker_fee_bps=MAKER_FEE_BPS,
                    taker_fee_bps=TAKER_FEE_BPS,
                )
            )
            added.append(symbol)
        await session.commit()
    return added
