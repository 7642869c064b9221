"""Deriv tick subscriptions over the public websocket API as a :class:`Tick` feed.

Per symbol the feed sends ``{"ticks": "R_100", "subscribe": 1, "req_id": n}`` and then
receives ``{"msg_type": "tick", "tick": {"symbol", "quote", "epoch", "id", "pip_size",
"bid", "ask"}, "subscription": {"id"}, "req_id": n}`` frames (the first one right away,
carrying the current quote). Quotes are JSON numbers; they are read as ``Decimal`` so
the conversion to minor units is exact.

Subscriptions belong to a connection, so after every reconnect they are sent again. When
``backfill`` is on and the last tick is recent, the feed first asks
``{"ticks_history": sym, "start": <last epoch>, "end": "latest", "style": "ticks"}``,
delivers the missed ticks, and only then resubscribes, so the consumer sees one ordered
stream. Ticks at or before the last delivered epoch are duplicates and are skipped.

Gap detection is by time, because Deriv tick ids are opaque: two consecutive delivered
ticks of a symbol more than ``gap_after`` seconds apart count as a gap
(``FeedGap(kind="time")``). Synthetic indices tick every 1-2 s, so the default of 5 s
catches a lost connection that backfill could not cover; pass ``gap_after=None`` for
markets that tick irregularly (forex).

Errors: ``{"error": {"code", "message"}}`` replies are counted in ``server_errors``. A
subscription refused for good (unknown symbol, bad input) puts the symbol in ``rejected``
and the others carry on; if every symbol is refused the feed fails with ``FeedError``.
Any other subscription error (rate limit, market closed, service unavailable) drops the
connection and retries with backoff. ``{"ping": 1}`` is sent every ``ping_interval``
seconds, as Deriv closes connections idle for two minutes.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from decimal import Decimal
from typing import Any

from tradegraph.marketdata.feeds.base import (
    Connector,
    FeedError,
    FeedGap,
    FeedSettings,
    ParseError,
    ReconnectRequested,
    SymbolSpec,
    WebsocketFeed,
    symbol_index,
)
from tradegraph.marketdata.ticks import Tick, price_to_minor

__all__ = ["DERIV_WS_URL", "PERMANENT_ERRORS", "DerivTickFeed", "parse_deriv_tick"]

log = logging.getLogger("tradegraph.marketdata.feeds")

DERIV_WS_URL = "wss://ws.derivws.com/websockets/v3"
SOURCE = "deriv"
#: Subscription errors that retrying cannot fix: the symbol is dropped from the feed.
PERMANENT_ERRORS = frozenset(
    {"InvalidSymbol", "InputValidationFailed", "UnrecognisedRequest", "InvalidAppID"}
)
HISTORY_LIMIT = 5000  # Deriv's maximum ``count`` for ticks_history


def _int(value: object, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ParseError(f"{field} must be an integer, got {value!r}")
    return value


def _number(value: object, field: str) -> Decimal | int | str:
    if isinstance(value, bool) or not isinstance(value, Decimal | int | str):
        raise ParseError(f"{field} must be a number, got {value!r}")
    return value


def _minor(value: object, field: str, decimals: int) -> int:
    minor = price_to_minor(_number(value, field), decimals, exact=False)
    if minor <= 0:
        raise ParseError(f"{field} must be positive, got {value!r}")
    return minor


def parse_deriv_tick(tick: Mapping[str, Any], spec: SymbolSpec) -> tuple[Tick, int]:
    """A ``tick`` object (quote as ``Decimal``) -> ``(Tick, epoch seconds)``.

    Deriv quotes have no size, so ``size`` is 0; ``bid``/``ask`` are kept when present.
    """
    epoch = _int(tick["epoch"], "epoch")
    if epoch < 0:
        raise ParseError("negative epoch")
    price = _minor(tick["quote"], "quote", spec.price_decimals)
    bid = _minor(tick["bid"], "bid", spec.price_decimals) if "bid" in tick else None
    ask = _minor(tick["ask"], "ask", spec.price_decimals) if "ask" in tick else None
    return (
        Tick(
            symbol=spec.symbol,
            price=price,
            size=0,
            ts=epoch * 1000,
            source=SOURCE,
            bid=bid,
            ask=ask,
        ),
        epoch,
    )


class DerivTickFeed(WebsocketFeed):
    """Ticks of the given Deriv symbols (``SymbolSpec("R_100", "R_100", 2)``).

    Pass ``app_id`` for the real endpoint or ``url`` (a full websocket URL) to point it
    elsewhere, e.g. at :class:`tradegraph.marketdata.feeds.fakes.FakeDerivServer`.
    ``clock`` (epoch seconds) decides whether the last tick is recent enough to backfill.
    """

    def __init__(
        self,
        symbols: Sequence[SymbolSpec],
        *,
        app_id: str | None = None,
        url: str | None = None,
        backfill: bool = True,
        backfill_max_age: float = 3600.0,
        gap_after: float | None = 5.0,
        ping_interval: float = 30.0,
        clock: Callable[[], float] = time.time,
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
        if url is None:
            if app_id is None or not app_id.isdigit():
                raise ValueError("pass a numeric Deriv app_id or an explicit url")
            url = f"{DERIV_WS_URL}?app_id={app_id}"
        if ping_interval <= 0 or ping_interval >= self.settings.idle_timeout:
            raise ValueError("need 0 < ping_interval < idle_timeout so pongs keep it alive")
        if gap_after is not None and gap_after <= 0:
            raise ValueError("gap_after must be positive (or None to disable)")
        self._url = url
        self.symbols = symbol_index(symbols)
        self.backfill = backfill
        self.backfill_max_age = backfill_max_age
        self.gap_after = gap_after
        self.keepalive_interval = ping_interval
        self._clock = clock
        self._req_ids = itertools.count(1)
        self._pending: dict[int, tuple[str, str]] = {}
        self._last_epoch: dict[str, int] = {}
        self._fresh: set[str] = set()
        #: Venue symbols Deriv refused for good, with the reason (``code: message``).
        self.rejected: dict[str, str] = {}
        #: Deriv's subscription id per venue symbol on the current connection.
        self.subscription_ids: dict[str, str] = {}
        self.backfilled = 0
        self.pings = 0

    def url(self) -> str:
        """The websocket endpoint (with ``app_id``)."""
        return self._url

    def active_symbols(self) -> list[str]:
        """Venue symbols still subscribed (not rejected)."""
        return [venue for venue in self.symbols if venue not in self.rejected]

    def last_epoch(self, venue_symbol: str) -> int | None:
        """Epoch seconds of the last tick delivered for a venue symbol."""
        return self._last_epoch.get(venue_symbol)

    def counters(self) -> dict[str, int]:
        """Base counters plus backfilled ticks and keep-alive pings sent."""
        return {**super().counters(), "backfilled": self.backfilled, "pings": self.pings}

    # -- hooks ----------------------------------------------------------------------

    async def on_connect(self) -> None:
        """(Re)subscribe every active symbol, backfilling first where it is worth it."""
        active = self.active_symbols()
        if not active:
            raise FeedError(f"{self.name}: every symbol was rejected: {self.rejected}")
        self._fresh = set(active) if self.connects > 1 else set()
        now = self._clock()
        for venue in active:
            last = self._last_epoch.get(venue)
            if self.backfill and last is not None and now - last <= self.backfill_max_age:
                await self._request(
                    {
                        "ticks_history": venue,
                        "start": last,
                        "end": "latest",
                        "style": "ticks",
                        "count": HISTORY_LIMIT,
                    },
                    "history",
                    venue,
                )
            else:
                await self._subscribe(venue)

    def on_disconnect(self) -> None:
        """Requests and subscriptions die with the connection."""
        self._pending.clear()
        self.subscription_ids.clear()

    async def on_keepalive(self) -> None:
        """Deriv's documented keep-alive."""
        self.pings += 1
        await self._request({"ping": 1}, "ping", "")

    async def handle_message(self, raw: str | bytes) -> None:
        """Dispatch one reply or stream frame by ``error`` / ``msg_type``."""
        message = json.loads(raw, parse_float=Decimal)
        if not isinstance(message, dict):
            raise ParseError("frame is not a JSON object")
        raw_id = message.get("req_id")
        req_id = raw_id if isinstance(raw_id, int) and not isinstance(raw_id, bool) else None
        pending = self._pending.get(req_id) if req_id is not None else None
        if "error" in message:
            await self._on_error(message["error"], pending, req_id)
            return
        msg_type = message["msg_type"]
        if msg_type == "tick":
            self._on_tick(message)
        elif msg_type == "history":
            await self._on_history(message, pending, req_id)
        elif msg_type == "ping":
            if req_id is not None:
                self._pending.pop(req_id, None)
        else:
            raise ParseError(f"unexpected msg_type {msg_type!r}")

    # -- internals --------------------------------------------------------------------

    async def _request(self, payload: dict[str, Any], kind: str, venue: str) -> None:
        req_id = next(self._req_ids)
        self._pending[req_id] = (kind, venue)
        await self.send(json.dumps({**payload, "req_id": req_id}))

    async def _subscribe(self, venue: str) -> None:
        await self._request({"ticks": venue, "subscribe": 1}, "ticks", venue)

    def _on_tick(self, message: Mapping[str, Any]) -> None:
        body = message["tick"]
        if not isinstance(body, dict):
            raise ParseError("tick is not an object")
        spec = self.symbols.get(body["symbol"])
        if spec is None:
            raise ParseError(f"tick for unsubscribed symbol {body['symbol']!r}")
        tick, epoch = parse_deriv_tick(body, spec)
        subscription = message.get("subscription")
        if isinstance(subscription, dict) and "id" in subscription:
            self.subscription_ids[spec.venue] = str(subscription["id"])
        self._accept(spec, tick, epoch)

    async def _on_history(
        self, message: Mapping[str, Any], pending: tuple[str, str] | None, req_id: int | None
    ) -> None:
        if req_id is None or pending is None or pending[0] != "history":
            raise ParseError(f"history reply to unknown request {req_id!r}")
        del self._pending[req_id]
        spec = self.symbols[pending[1]]
        try:
            history = message["history"]
            prices, times = history["prices"], history["times"]
            if not isinstance(prices, list) or not isinstance(times, list):
                raise ParseError("history prices/times are not lists")
            if len(prices) != len(times):
                raise ParseError("history prices/times differ in length")
            ticks = sorted(
                (
                    parse_deriv_tick({"epoch": epoch, "quote": quote}, spec)
                    for epoch, quote in zip(times, prices, strict=True)
                ),
                key=lambda pair: pair[1],
            )
        finally:
            # Even a broken backfill must not leave the symbol unsubscribed.
            await self._subscribe(spec.venue)
        for tick, epoch in ticks:
            if self._accept(spec, tick, epoch):
                self.backfilled += 1

    async def _on_error(
        self, error: object, pending: tuple[str, str] | None, req_id: int | None
    ) -> None:
        self.server_errors += 1
        code = str(error.get("code", "")) if isinstance(error, dict) else ""
        text = str(error.get("message", "")) if isinstance(error, dict) else repr(error)
        self.last_error = f"deriv {code}: {text}"
        kind, venue = pending if pending is not None else ("", "")
        if kind == "ticks" and code != "AlreadySubscribed":
            if code in PERMANENT_ERRORS:
                self.rejected[venue] = f"{code}: {text}"
                log.error(
                    "deriv subscription rejected",
                    extra={"feed": self.name, "symbol": venue, "code": code, "reason": text},
                )
                if not self.active_symbols():
                    raise FeedError(f"{self.name}: every symbol was rejected: {self.rejected}")
                return
            raise ReconnectRequested(f"deriv {code} on {venue}: {text}")
        log.warning(
            "deriv error reply",
            extra={"feed": self.name, "request": kind or None, "symbol": venue, "code": code},
        )
        if req_id is not None and kind in ("history", "ping"):
            del self._pending[req_id]
        if kind == "history":
            await self._subscribe(venue)

    def _accept(self, spec: SymbolSpec, tick: Tick, epoch: int) -> bool:
        """Deliver a tick unless it is a duplicate; report a time gap before it."""
        venue = spec.venue
        last = self._last_epoch.get(venue)
        if last is not None:
            if epoch <= last:
                self.duplicates += 1
                return False
            if self.gap_after is not None and epoch - last > self.gap_after:
                self.emit_gap(
                    FeedGap(
                        source=self.name,
                        symbol=spec.symbol,
                        kind="time",
                        last_ts=last * 1000,
                        next_ts=tick.ts,
                        after_reconnect=venue in self._fresh,
                    )
                )
        self._fresh.discard(venue)
        self._last_epoch[venue] = epoch
        self.emit(tick)
        return True
