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
    # SIM-venue underlyings and quote currencies (feed-priced CFDs).
    ("EUR", "Euro", 2),
    ("GBP", "British Pound", 2),
    ("JPY", "Japanese Yen", 3),  # 3 places so USDJPY (3 price decimals) x 1 USD is exact
    ("XAU", "Gold (troy ounce)", 4),
    ("US30", "Dow Jones 30 index unit", 2),
    ("NAS100", "Nasdaq 100 index unit", 2),
)

# symbol, base, quote, price decimals, qty decimals, tick, lot, min notional (USD units)
INSTRUMENTS: tuple[tuple[str, str, str, int, int, int, int, int], ...] = (
    ("BTC-USD", "BTC", "USD", 2, 4, 1, 1, 1_000_000),
    ("ETH-USD", "ETH", "USD", 2, 4, 1, 1, 1_000_000),
    ("SOL-USD", "SOL", "USD", 2, 2, 1, 1, 1_000_000),
)

# SIM venue: filled at feed (market simulator) prices, marked by the market-data service.
# Price decimals match the simulator's symbols; quantity decimals are as fine as the quote
# asset allows (quote decimals >= price + quantity decimals). No maker/taker fee here:
# what a SIM fill costs is the account's plan's business, not the instrument's.
SIM_INSTRUMENTS: tuple[tuple[str, str, str, int, int, int, int, int], ...] = (
    ("EURUSD", "EUR", "USD", 5, 0, 1, 1, 1_000_000),
    ("GBPUSD", "GBP", "USD", 5, 0, 1, 1, 1_000_000),
    ("USDJPY", "USD", "JPY", 3, 0, 1, 1, 100_000),
    ("XAUUSD", "XAU", "USD", 2, 2, 1, 1, 1_000_000),
    ("US30", "US30", "USD", 1, 2, 1, 1, 1_000_000),
    ("NAS100", "NAS100", "USD", 1, 2, 1, 1, 1_000_000),
    ("BTCUSD", "BTC", "USD", 2, 4, 1, 1, 1_000_000),
    ("ETHUSD", "ETH", "USD", 2, 4, 1, 1, 1_000_000),
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
        venues = [(row, m.Venue.CLOB) for row in INSTRUMENTS]
        venues += [(row, m.Venue.SIM) for row in SIM_INSTRUMENTS]
        for (symbol, base, quote, pd, qd, tick, lot, min_notional), venue in venues:
            if symbol in have:
                continue
            clob = venue is m.Venue.CLOB
            session.add(
                m.Instrument(
                    symbol=symbol,
                    base_asset=base,
                    quote_asset=quote,
                    venue=venue,
                    price_decimals=pd,
                    qty_decimals=qd,
                    tick=tick,
                    lot=lot,
                    min_qty=lot,
                    min_notional=min_notional,
                    maker_fee_bps=MAKER_FEE_BPS if clob else 0,
                    taker_fee_bps=TAKER_FEE_BPS if clob else 0,
                )
            )
            added.append(symbol)
        await session.commit()
    return added
