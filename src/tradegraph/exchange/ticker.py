"""Ticker state: last price, best bid/ask and rolling 24h stats per symbol (pure).

The runtime feeds it trades and book tops as the sequencer publishes them and emits at
most one ticker per symbol per interval (10 a second by default).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

DAY_SECONDS = 24 * 3600


@dataclass
class SymbolTicker:
    last: int | None = None
    best_bid: int | None = None
    best_ask: int | None = None
    window: deque[tuple[float, int, int]] = field(default_factory=deque)  # (ts, price, qty)
    volume: int = 0
    dirty: bool = False

    def add_trade(self, ts: float, price: int, qty: int) -> None:
        self.window.append((ts, price, qty))
        self.volume += qty
        self.last = price
        self.dirty = True

    def expire(self, now: float) -> None:
        cutoff = now - DAY_SECONDS
        while self.window and self.window[0][0] < cutoff:
            _, _, qty = self.window.popleft()
            self.volume -= qty

    def snapshot(self, symbol: str, now_iso: str) -> dict[str, Any]:
        open_price = self.window[0][1] if self.window else None
        change = None
        if open_price and self.last is not None:
            change = str(
                (Decimal(self.last - open_price) * 100 / Decimal(open_price)).quantize(
                    Decimal("0.01")
                )
            )
        return {
            "symbol": symbol,
            "last": self.last,
            "best_bid": self.best_bid,
            "best_ask": self.best_ask,
            "change_percent": change,
            "volume": self.volume,
            "ts": now_iso,
        }


class TickerBoard:
    """All symbols' tickers; ``due`` returns the ones that changed since the last call."""

    def __init__(self) -> None:
        self.symbols: dict[str, SymbolTicker] = {}

    def get(self, symbol: str) -> SymbolTicker:
        ticker = self.symbols.get(symbol)
        if ticker is None:
            ticker = self.symbols[symbol] = SymbolTicker()
        return ticker

    def on_top(self, symbol: str, best_bid: int | None, best_ask: int | None) -> None:
        t = self.get(symbol)
        if (t.best_bid, t.best_ask) != (best_bid, best_ask):
            t.best_bid, t.best_ask = best_bid, best_ask
            t.dirty = True

    def due(self, now: float, now_iso: str) -> list[dict[str, Any]]:
        out = []
        for symbol, t in self.symbols.items():
            t.expire(now)
            if t.dirty:
                t.dirty = False
                out.append(t.snapshot(symbol, now_iso))
        return out
