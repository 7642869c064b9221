"""Binance public trade streams (combined-stream endpoint) as a :class:`Tick` feed.

One connection carries every symbol: ``<base>/stream?streams=btcusdt@trade/ethusdt@trade``
and each frame is ``{"stream": "btcusdt@trade", "data": {"e": "trade", "s": "BTCUSDT",
"t": <trade id>, "p": "<price>", "q": "<qty>", "T": <trade time ms>, "m": <buyer is
maker>, ...}}``. Prices and quantities are decimal strings, converted exactly to the
symbol's minor units.

Gap detection: Binance trade ids grow by exactly one per symbol, so a jump means trades
we never saw (a dropped frame, or trades printed while we were reconnecting). Each jump
is counted in ``gaps`` and surfaced as a ``FeedGap(kind="sequence", missing=n)``. Ids
at or below the last one seen are duplicates and are skipped. Binance closes every
connection after 24 h; that is just another reconnect here.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Awaitable, Callable, Mapping, Sequence
from decimal import Decimal
from typing import Any

from tradegraph.marketdata.feeds.base import (
    Connector,
    FeedGap,
    FeedSettings,
    ParseError,
    SymbolSpec,
    WebsocketFeed,
    symbol_index,
)
from tradegraph.marketdata.ticks import Tick, price_to_minor

__all__ = ["BINANCE_WS_URL", "BinanceTradeFeed", "parse_binance_trade"]

BINANCE_WS_URL = "wss://stream.binance.com:9443"
SOURCE = "binance"
# Binance allows at most 1024 streams per connection.
MAX_STREAMS = 1024


def _int(value: object, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ParseError(f"{field} must be an integer, got {value!r}")
    return value


def _decimal_text(value: object, field: str) -> str:
    # Binance sends decimals as strings; a JSON number here would already be lossy.
    if not isinstance(value, str):
        raise ParseError(f"{field} must be a decimal string, got {value!r}")
    return value


def parse_binance_trade(data: Mapping[str, Any], spec: SymbolSpec) -> tuple[Tick, int]:
    """One trade event's ``data`` object -> ``(tick, trade id)``.

    Price and quantity are parsed from their strings into minor units (half-even when
    Binance quotes more digits than the symbol has); time is the trade time ``T``.
    """
    trade_id = _int(data["t"], "t")
    ts = _int(data["T"], "T")
    if ts < 0 or trade_id < 0:
        raise ParseError("negative trade id or time")
    price = price_to_minor(_decimal_text(data["p"], "p"), spec.price_decimals, exact=False)
    size = price_to_minor(_decimal_text(data["q"], "q"), spec.qty_decimals, exact=False)
    if price <= 0 or size < 0:
        raise ParseError(f"implausible trade price={data['p']!r} qty={data['q']!r}")
    return Tick(symbol=spec.symbol, price=price, size=size, ts=ts, source=SOURCE), trade_id


class BinanceTradeFeed(WebsocketFeed):
    """Trades of the given Binance symbols, mapped to platform symbols.

    ``symbols`` maps venue symbols to ours, e.g.
    ``SymbolSpec("BTCUSDT", "BTCUSD", price_decimals=2, qty_decimals=8)``.
    ``base_url`` is injectable for tests and sandbox mode (see
    :class:`tradegraph.marketdata.feeds.fakes.FakeBinanceServer`).
    """

    def __init__(
        self,
        symbols: Sequence[SymbolSpec],
        *,
        base_url: str = BINANCE_WS_URL,
        name: str = SOURCE,
        settings: FeedSettings | None = None,
        connector: Connector | None = None,
        sleep: Callable[[float], Awaitable[None]] | None = None,
        rng: random.Random | None = None,
        on_gap: Callable[[FeedGap], None] | None = None,
        stop_event: asyncio.Event | None = None,
    ) -> None:
        super().__init__(
            name,
            settings=settings,
            connector=connector,
            sleep=sleep,
            rng=rng,
            on_gap=on_gap,
            stop_event=stop_event,
        )
        self.symbols = symbol_index([_upper(s) for s in symbols])
        if len(self.symbols) > MAX_STREAMS:
            raise ValueError(f"Binance allows at most {MAX_STREAMS} streams per connection")
        self.base_url = base_url.rstrip("/")
        self._streams = {f"{venue.lower()}@trade": spec for venue, spec in self.symbols.items()}
        self._last_id: dict[str, int] = {}
        self._last_ts: dict[str, int] = {}
        self._fresh: set[str] = set()

    def url(self) -> str:
        """The combined-stream URL subscribing to every symbol's ``@trade`` stream."""
        return f"{self.base_url}/stream?streams={'/'.join(self._streams)}"

    def last_trade_id(self, venue_symbol: str) -> int | None:
        """The last trade id delivered for a venue symbol (``None`` before the first)."""
        return self._last_id.get(venue_symbol.upper())

    async def on_connect(self) -> None:
        # Subscriptions ride on the URL; remember that the next id per symbol may jump.
        self._fresh = set(self.symbols) if self.connects > 1 else set()

    async def handle_message(self, raw: str | bytes) -> None:
        """Parse one combined-stream frame; see the module docstring for the rules."""
        message = json.loads(raw, parse_float=Decimal)
        if not isinstance(message, dict):
            raise ParseError("frame is not a JSON object")
        if "error" in message:
            # Only replies to (unused) SUBSCRIBE requests carry errors; note and go on.
            self.server_errors += 1
            self.last_error = f"binance error: {message['error']!r}"
            return
        if "result" in message and "id" in message:
            return  # reply to a control request
        stream, data = message["stream"], message["data"]
        if not isinstance(data, dict) or not isinstance(stream, str):
            raise ParseError("stream/data have the wrong type")
        if data.get("e") != "trade":
            raise ParseError(f"unexpected event {data.get('e')!r} on {stream}")
        spec = self._streams.get(stream)
        if spec is None or data.get("s") != spec.venue:
            raise ParseError(f"trade for {data.get('s')!r} on unsubscribed stream {stream!r}")
        tick, trade_id = parse_binance_trade(data, spec)
        self._accept(spec, tick, trade_id)

    def _accept(self, spec: SymbolSpec, tick: Tick, trade_id: int) -> None:
        last = self._last_id.get(spec.venue)
        after_reconnect = spec.venue in self._fresh
        self._fresh.discard(spec.venue)
        if last is not None:
            if trade_id <= last:
                self.duplicates += 1
                return
            if trade_id != last + 1:
                self.emit_gap(
                    FeedGap(
                        source=self.name,
                        symbol=spec.symbol,
                        kind="sequence",
                        missing=trade_id - last - 1,
                        last_ts=self._last_ts.get(spec.venue),
                        next_ts=tick.ts,
                        after_reconnect=after_reconnect,
                    )
                )
        self._last_id[spec.venue] = trade_id
        self._last_ts[spec.venue] = tick.ts
        self.emit(tick)


def _upper(spec: SymbolSpec) -> SymbolSpec:
    """Binance symbols are upper case in payloads and lower case in stream names."""
    if spec.venue.isupper():
        return spec
    return SymbolSpec(spec.venue.upper(), spec.symbol, spec.price_decimals, spec.qty_decimals)
