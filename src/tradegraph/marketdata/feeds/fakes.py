"""Local fake Binance and Deriv market-data websocket servers (tests and sandbox mode).

Both speak the documented message shapes on ``ws://127.0.0.1:<random port>`` so the real
adapters can be pointed at them unchanged. Data is either scripted by the caller
(:meth:`FakeBinanceServer.trade`, :meth:`FakeDerivServer.tick`) or, with ``interval``,
produced by a seeded random walk for a lively sandbox.

Test hooks, shared by both: :meth:`drop` (vanish without a close frame, like a network
failure), :meth:`silence` (keep the current connections open but send nothing more, to
exercise idle timeouts), :meth:`send_raw` (malformed frames) and :meth:`wait_until`
(event-driven waiting on server state instead of sleeps). Binance adds
:meth:`FakeBinanceServer.skip_ids` (trade-id gaps); Deriv adds
:meth:`FakeDerivServer.reject_subscribe` (Deriv-style error replies) and keeps a tick
history for ``ticks_history`` backfill.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import json
import random
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import ROUND_HALF_EVEN, Decimal
from http import HTTPStatus
from typing import Any, Self
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

__all__ = ["FakeBinanceServer", "FakeDerivServer"]


@dataclass(eq=False)
class _Client:
    """One connected client and what it asked for."""

    ws: ServerConnection
    streams: frozenset[str] = frozenset()
    subscriptions: dict[str, tuple[int | None, str]] = field(default_factory=dict)
    silent: bool = False


class _FakeServer(abc.ABC):
    """Server lifecycle, the client registry and the shared fault hooks."""

    path = "/"

    def __init__(self, *, interval: float | None, seed: int) -> None:
        if interval is not None and interval <= 0:
            raise ValueError("interval must be positive")
        self.interval = interval
        self.rng = random.Random(seed)
        self.connections_opened = 0
        self.frames_received = 0
        self._clients: dict[ServerConnection, _Client] = {}
        self._server: Server | None = None
        self._port: int | None = None
        self._producer: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()

    # -- lifecycle ---------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """``ws://127.0.0.1:<port>``."""
        if self._port is None:
            raise RuntimeError("fake server is not started")
        return f"ws://127.0.0.1:{self._port}"

    async def start(self) -> str:
        """Listen on a random 127.0.0.1 port; returns the URL to give the adapter."""
        self._server = await serve(
            self._handle,
            "127.0.0.1",
            0,
            process_request=self._process_request,
            ping_interval=None,
            close_timeout=1,
        )
        self._port = next(iter(self._server.sockets)).getsockname()[1]
        if self.interval is not None:
            self._producer = asyncio.create_task(self._produce(self.interval), name="fake-feed")
        return self.url

    async def stop(self) -> None:
        """Stop producing, close every connection and the listener."""
        if self._producer is not None:
            self._producer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._producer
            self._producer = None
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), timeout=5)
            self._server = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def url(self) -> str:
        """What the matching adapter connects to."""
        return self.base_url

    @property
    def active_connections(self) -> int:
        """Clients connected right now."""
        return len(self._clients)

    # -- test hooks --------------------------------------------------------------------

    def drop(self) -> int:
        """Abort every connection without a close frame (a network failure); count them."""
        clients = list(self._clients.values())
        self._clients.clear()
        for client in clients:
            client.ws.transport.abort()
        self._notify()
        return len(clients)

    def silence(self) -> int:
        """Stop sending anything on the current connections (they stay open)."""
        for client in self._clients.values():
            client.silent = True
        return len(self._clients)

    async def send_raw(self, frame: str | bytes) -> int:
        """Send a frame verbatim (e.g. malformed JSON) to every live connection."""
        sent = 0
        for client in list(self._clients.values()):
            sent += await self._send_text(client, frame)
        return sent

    async def wait_until(self, predicate: Callable[[], bool], within: float = 5.0) -> None:
        """Wait until ``predicate()`` holds, re-checking whenever server state changes."""
        async with asyncio.timeout(within):
            while True:
                changed = self._changed
                if predicate():
                    return
                await changed.wait()

    # -- plumbing ----------------------------------------------------------------------

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        if urlsplit(request.path).path != self.path:
            return connection.respond(HTTPStatus.NOT_FOUND, "Not Found\n")
        return None

    async def _handle(self, ws: ServerConnection) -> None:
        client = self._register(ws)
        self._clients[ws] = client
        self.connections_opened += 1
        self._notify()
        try:
            async for frame in ws:
                self.frames_received += 1
                await self._on_frame(client, frame)
                self._notify()
        except ConnectionClosed:
            pass
        finally:
            self._clients.pop(ws, None)
            self._notify()

    async def _send_text(self, client: _Client, frame: str | bytes) -> int:
        if client.silent:
            return 0
        try:
            await client.ws.send(frame)
        except ConnectionClosed:
            return 0
        return 1

    async def _send(self, client: _Client, message: Mapping[str, Any]) -> int:
        return await self._send_text(client, json.dumps(message, default=_json_default))

    def _register(self, ws: ServerConnection) -> _Client:
        return _Client(ws)

    async def _on_frame(self, client: _Client, frame: str | bytes) -> None:  # noqa: B027
        """Client frames are ignored unless the venue has a request protocol."""

    @abc.abstractmethod
    async def _produce(self, interval: float) -> None:
        """Random-walk data every ``interval`` seconds (sandbox mode)."""


def _json_default(value: object) -> object:
    if isinstance(value, Decimal):
        # Deriv sends quotes as JSON numbers; float repr round-trips the short decimals.
        return float(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


# ------------------------------------------------------------------------------ Binance


def _tick_size(price: Decimal) -> Decimal:
    """The smallest step a price written like ``price`` can take ("43000.10" -> 0.01)."""
    exponent = price.as_tuple().exponent
    if not isinstance(exponent, int) or not price.is_finite() or price <= 0:
        raise ValueError(f"start price must be a positive finite decimal, got {price}")
    return Decimal(1).scaleb(exponent)


@dataclass
class _BinanceSymbol:
    next_id: int
    price: Decimal
    tick_size: Decimal


class FakeBinanceServer(_FakeServer):
    """Binance's combined-stream endpoint: ``/stream?streams=btcusdt@trade/...``.

    ``prices`` sets the symbols and their start prices (their decimals set the tick size
    of the random walk). Trade ids start at ``first_trade_id`` and grow by one per
    symbol unless :meth:`skip_ids` makes them jump.
    """

    path = "/stream"

    def __init__(
        self,
        prices: Mapping[str, Decimal | str] | None = None,
        *,
        interval: float | None = None,
        seed: int = 0,
        first_trade_id: int = 1_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(interval=interval, seed=seed)
        prices = prices or {"BTCUSDT": "43000.00", "ETHUSDT": "2300.00"}
        self.symbols: dict[str, _BinanceSymbol] = {}
        for symbol, start in prices.items():
            price = Decimal(start)
            self.symbols[symbol.upper()] = _BinanceSymbol(
                next_id=first_trade_id,
                price=price,
                tick_size=_tick_size(price),
            )
        self.clock = clock
        #: The ``streams`` each connection asked for, in connection order.
        self.requested_streams: list[tuple[str, ...]] = []

    def subscribers(self, symbol: str) -> int:
        """Live, non-silent connections subscribed to ``symbol``'s trade stream."""
        stream = f"{symbol.lower()}@trade"
        return sum(1 for c in self._clients.values() if stream in c.streams and not c.silent)

    def skip_ids(self, symbol: str, count: int) -> None:
        """Make the next trade id of ``symbol`` jump by ``count`` (a gap to detect)."""
        if count < 1:
            raise ValueError("count must be >= 1")
        self.symbols[symbol.upper()].next_id += count

    async def trade(
        self,
        symbol: str,
        price: Decimal | str | None = None,
        qty: Decimal | str | None = None,
        *,
        time_ms: int | None = None,
        buyer_maker: bool | None = None,
    ) -> int:
        """Print one trade and push it to its subscribers; returns the trade id.

        ``price``/``qty`` default to a random-walk step and a random size.
        """
        state = self.symbols[symbol.upper()]
        if price is None:
            steps = self.rng.randint(-5, 5)
            state.price = max(state.tick_size, state.price + steps * state.tick_size)
            price = state.price
        if qty is None:
            qty = Decimal(self.rng.randint(1, 100_000)).scaleb(-5)
        trade_id = state.next_id
        state.next_id += 1
        now_ms = int(self.clock() * 1000) if time_ms is None else time_ms
        if buyer_maker is None:
            buyer_maker = self.rng.random() < 0.5
        venue = symbol.upper()
        stream = f"{venue.lower()}@trade"
        frame = {
            "stream": stream,
            "data": {
                "e": "trade",
                "E": now_ms,
                "s": venue,
                "t": trade_id,
                "p": f"{Decimal(price):.8f}",
                "q": f"{Decimal(qty):.8f}",
                "T": now_ms,
                "m": buyer_maker,
                "M": True,
            },
        }
        for client in list(self._clients.values()):
            if stream in client.streams:
                await self._send(client, frame)
        return trade_id

    def _register(self, ws: ServerConnection) -> _Client:
        query = parse_qs(urlsplit(ws.request.path if ws.request else "").query)
        streams = tuple(s for s in query.get("streams", [""])[0].split("/") if s)
        self.requested_streams.append(streams)
        return _Client(ws, streams=frozenset(streams))

    async def _produce(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            for symbol in self.symbols:
                await self.trade(symbol)


# -------------------------------------------------------------------------------- Deriv


@dataclass
class _Rejection:
    code: str
    message: str
    symbol: str | None
    remaining: int


class FakeDerivServer(_FakeServer):
    """Deriv's ``/websockets/v3``: ``ticks`` subscriptions, ``ticks_history``, ``ping``.

    ``symbols`` maps Deriv symbols to their ``pip_size``. Every tick is kept in a history
    so ``ticks_history`` can serve what a disconnected client missed. A subscribe is
    answered at once with the latest tick (as Deriv does), then with each new one.
    """

    path = "/websockets/v3"

    def __init__(
        self,
        symbols: Mapping[str, int] | None = None,
        *,
        start_quote: Decimal | str = "1000",
        interval: float | None = None,
        seed: int = 0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(interval=interval, seed=seed)
        self.symbols = dict(symbols or {"R_100": 2, "R_50": 4, "1HZ100V": 2})
        self.clock = clock
        self.history: dict[str, list[tuple[int, Decimal]]] = {s: [] for s in self.symbols}
        self._quotes = {s: Decimal(start_quote) for s in self.symbols}
        self._rejections: list[_Rejection] = []
        #: Every decoded client request, in arrival order.
        self.requests: list[dict[str, Any]] = []

    @property
    def url(self) -> str:
        """The endpoint with an ``app_id``, like the real one."""
        return f"{self.base_url}{self.path}?app_id=1089"

    def requests_of(self, kind: str) -> list[dict[str, Any]]:
        """Client requests of one type (``ticks``, ``ticks_history``, ``ping``)."""
        return [r for r in self.requests if kind in r]

    def subscribers(self, symbol: str) -> int:
        """Live, non-silent connections subscribed to ``symbol``."""
        return sum(1 for c in self._clients.values() if symbol in c.subscriptions and not c.silent)

    def reject_subscribe(
        self,
        code: str = "MarketIsClosed",
        message: str = "This market is presently closed.",
        *,
        symbol: str | None = None,
        times: int = 1,
    ) -> None:
        """Answer the next ``times`` subscribes (to ``symbol``, or any) with an error."""
        self._rejections.append(_Rejection(code, message, symbol, times))

    async def tick(
        self, symbol: str, quote: Decimal | str | None = None, *, epoch: int | None = None
    ) -> int:
        """Record one tick and push it to subscribers; returns its epoch.

        ``epoch`` defaults to the clock (at least one second after the previous tick),
        ``quote`` to a random-walk step rounded to the symbol's pip size.
        """
        pip = self.symbols[symbol]
        past = self.history[symbol]
        if epoch is None:
            epoch = max(int(self.clock()), past[-1][0] + 1 if past else 0)
        if quote is None:
            step = Decimal(self.rng.gauss(0, 1)).scaleb(-1)
            quote = self._quotes[symbol] + step
        value = Decimal(quote).quantize(Decimal(1).scaleb(-pip), rounding=ROUND_HALF_EVEN)
        self._quotes[symbol] = value
        past.append((epoch, value))
        for client in list(self._clients.values()):
            if symbol in client.subscriptions:
                await self._send_tick(client, symbol, epoch, value)
        return epoch

    async def _send_tick(self, client: _Client, symbol: str, epoch: int, quote: Decimal) -> None:
        req_id, sub_id = client.subscriptions[symbol]
        echo: dict[str, Any] = {"ticks": symbol, "subscribe": 1}
        message: dict[str, Any] = {
            "echo_req": echo,
            "msg_type": "tick",
            "subscription": {"id": sub_id},
            "tick": {
                "ask": quote,
                "bid": quote,
                "epoch": epoch,
                "id": uuid.uuid4().hex,
                "pip_size": self.symbols[symbol],
                "quote": quote,
                "symbol": symbol,
            },
        }
        if req_id is not None:
            echo["req_id"] = req_id
            message["req_id"] = req_id
        await self._send(client, message)

    async def _on_frame(self, client: _Client, frame: str | bytes) -> None:
        try:
            request = json.loads(frame)
        except ValueError:
            request = None
        if not isinstance(request, dict):
            await self._send(
                client,
                {
                    "error": {"code": "InputValidationFailed", "message": "Input validation."},
                    "msg_type": "error",
                },
            )
            return
        self.requests.append(request)
        envelope: dict[str, Any] = {"echo_req": request}
        req_id = request.get("req_id")
        if req_id is not None:
            envelope["req_id"] = req_id
        if "ping" in request:
            await self._send(client, {**envelope, "msg_type": "ping", "ping": "pong"})
        elif "ticks" in request:
            await self._subscribe(client, request, envelope)
        elif "ticks_history" in request:
            await self._send(client, {**envelope, **self._history(request)})
        else:
            await self._send(
                client,
                {
                    **envelope,
                    "msg_type": "error",
                    "error": {"code": "UnrecognisedRequest", "message": "Unrecognised request."},
                },
            )

    def _take_rejection(self, symbol: str) -> _Rejection | None:
        for rejection in self._rejections:
            if rejection.symbol in (None, symbol):
                rejection.remaining -= 1
                if rejection.remaining <= 0:
                    self._rejections.remove(rejection)
                return rejection
        return None

    async def _subscribe(
        self, client: _Client, request: dict[str, Any], envelope: dict[str, Any]
    ) -> None:
        symbol = request.get("ticks")
        error: tuple[str, str] | None = None
        if not isinstance(symbol, str) or symbol not in self.symbols:
            error = ("InvalidSymbol", f"Symbol {symbol} is invalid.")
        elif symbol in client.subscriptions:
            error = ("AlreadySubscribed", f"You are already subscribed to {symbol}.")
        elif (rejection := self._take_rejection(symbol)) is not None:
            error = (rejection.code, rejection.message)
        if error is not None:
            await self._send(
                client,
                {**envelope, "msg_type": "tick", "error": {"code": error[0], "message": error[1]}},
            )
            return
        assert isinstance(symbol, str)
        req_id = request.get("req_id")
        client.subscriptions[symbol] = (
            req_id if isinstance(req_id, int) else None,
            uuid.uuid4().hex,
        )
        past = self.history[symbol]
        if past:
            await self._send_tick(client, symbol, *past[-1])

    def _history(self, request: dict[str, Any]) -> dict[str, Any]:
        symbol = request.get("ticks_history")
        if not isinstance(symbol, str) or symbol not in self.symbols:
            return {
                "msg_type": "history",
                "error": {"code": "InvalidSymbol", "message": f"Symbol {symbol} is invalid."},
            }
        end = request.get("end", "latest")
        start = request.get("start", 0)
        count = request.get("count", 5000)
        if (
            not isinstance(start, int)
            or not isinstance(count, int)
            or not 1 <= count <= 5000
            or not (end == "latest" or isinstance(end, int))
        ):
            return {
                "msg_type": "history",
                "error": {"code": "InputValidationFailed", "message": "Input validation failed."},
            }
        rows = [
            (e, q) for e, q in self.history[symbol] if e >= start and (end == "latest" or e <= end)
        ][-count:]
        return {
            "msg_type": "history",
            "history": {"prices": [q for _, q in rows], "times": [e for e, _ in rows]},
            "pip_size": self.symbols[symbol],
        }

    async def _produce(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            for symbol in self.symbols:
                await self.tick(symbol)
