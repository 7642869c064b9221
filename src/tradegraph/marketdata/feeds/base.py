"""A reusable websocket feed runner: connect, subscribe, read, reconnect with backoff.

Venue adapters (:mod:`.binance`, :mod:`.deriv`) only say how to build the URL, what to
send after connecting and how to turn one frame into ticks; everything that keeps a
long-lived market-data connection alive lives here, once:

* **Reconnect** after any network failure, server error or idle connection, waiting an
  exponential backoff with jitter capped at ``Backoff.max_delay`` (so a fleet of workers
  does not hammer a venue in lockstep after an outage). The backoff resets only after a
  connection has delivered a tick, so a server that accepts and immediately hangs up
  still backs off. ``FeedSettings.max_retries`` optionally gives up (the feed then fails).
* **Idle timeout**: a connection that delivers no frame for ``idle_timeout`` seconds is
  treated as dead (half-open TCP, a stalled venue) and replaced.
* **Parse errors** are counted, logged (rate-limited) and skipped; a bad frame never ends
  the loop.
* **Bounded output**: ticks go to a buffer of ``buffer_size`` items. When the consumer is
  slow the *oldest* item is dropped (counted in ``dropped``): for prices the newest data
  is the valuable data, and blocking would stall the socket until the venue disconnects
  us. The consumer learns about drops in-band, see :meth:`WebsocketFeed.stream`.
* **Gaps** the venue adapter detects (skipped sequence numbers, time holes) are counted,
  logged, passed to the optional ``on_gap`` callback (out-of-band alerting) and queued
  as a :class:`FeedGap` marker between the ticks where they happened (in-band, for
  consumers that must react in order, e.g. mark a candle as incomplete).
* **Stop**: :meth:`WebsocketFeed.stop` or setting the ``stop_event`` passed in (one app-wide
  shutdown signal can stop every feed) cancels the loop wherever it waits, closes the
  socket and ends iteration after the already-buffered items.

Counters are plain ``int`` attributes so a metrics collector can read them without locks;
:meth:`WebsocketFeed.counters` returns them all at once.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import random
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException

from tradegraph.errors import DomainError
from tradegraph.marketdata.ticks import Tick

__all__ = [
    "Backoff",
    "Connector",
    "FeedError",
    "FeedGap",
    "FeedSettings",
    "FeedSocket",
    "GapKind",
    "ParseError",
    "SymbolSpec",
    "WebsocketFeed",
    "websocket_connector",
]

log = logging.getLogger("tradegraph.marketdata.feeds")

GapKind = Literal["sequence", "time", "overflow"]


class FeedError(Exception):
    """The feed gave up: retries exhausted or the venue refused every subscription."""


class ParseError(ValueError):
    """A frame that does not have the documented shape (counted and skipped)."""


class ReconnectRequested(Exception):
    """Raised by an adapter to drop the current connection and reconnect with backoff."""


# What a malformed frame can raise while being parsed: all are counted, none are fatal.
PARSE_ERRORS: tuple[type[BaseException], ...] = (
    ValueError,  # includes json.JSONDecodeError and ParseError
    KeyError,
    TypeError,
    IndexError,
    ArithmeticError,  # includes decimal.InvalidOperation
    DomainError,  # price_to_minor on a non-number
)


@dataclass(frozen=True, slots=True)
class SymbolSpec:
    """How one venue symbol maps onto a platform symbol and its integer units.

    ``venue`` is the venue's spelling (``BTCUSDT``, ``R_100``), ``symbol`` ours
    (``BTCUSD``). Prices/sizes are converted to minor units with ``price_decimals`` /
    ``qty_decimals``; extra venue digits are rounded half-even (see
    :func:`tradegraph.marketdata.ticks.price_to_minor`).
    """

    venue: str
    symbol: str
    price_decimals: int
    qty_decimals: int = 0

    def __post_init__(self) -> None:
        if not self.venue or not self.symbol:
            raise ValueError("venue and symbol must be non-empty")
        if not 0 <= self.price_decimals <= 18 or not 0 <= self.qty_decimals <= 18:
            raise ValueError("decimals must be within 0..18")


@dataclass(frozen=True, slots=True)
class FeedGap:
    """Data the venue sent that this feed did not deliver.

    ``kind`` is ``sequence`` (ids jumped; ``missing`` = how many), ``time`` (no tick for
    longer than expected; ``missing`` unknown) or ``overflow`` (the local buffer dropped
    ``missing`` items because the consumer was slow; ``symbol`` is then ``None``).
    ``last_ts``/``next_ts`` are the epoch-ms times around the hole, when known.
    """

    source: str
    symbol: str | None
    kind: GapKind
    missing: int | None = None
    last_ts: int | None = None
    next_ts: int | None = None
    after_reconnect: bool = False


StreamItem = Tick | FeedGap


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential reconnect delays with "equal jitter", capped at ``max_delay`` seconds.

    Delay for attempt ``n`` (1-based) is ``step = min(max_delay, base_delay * factor**(n-1))``
    scaled into ``[step * (1 - jitter), step]``: the fixed part keeps delays growing, the
    random part spreads many clients that lost the venue at the same moment.
    """

    base_delay: float = 0.5
    max_delay: float = 30.0
    factor: float = 2.0
    jitter: float = 0.5

    def __post_init__(self) -> None:
        if not 0 < self.base_delay <= self.max_delay:
            raise ValueError("need 0 < base_delay <= max_delay")
        if self.factor < 1:
            raise ValueError("factor must be >= 1")
        if not 0 <= self.jitter <= 1:
            raise ValueError("jitter must be within 0..1")

    def step(self, attempt: int) -> float:
        """The un-jittered delay for ``attempt`` (1-based); never above ``max_delay``."""
        if attempt < 1:
            raise ValueError("attempt is 1-based")
        exponent = min(attempt - 1, 1024)
        try:
            raw = self.base_delay * self.factor**exponent
        except OverflowError:
            return self.max_delay
        return min(self.max_delay, raw)

    def delay(self, attempt: int, rng: random.Random) -> float:
        """The jittered delay before reconnect ``attempt``."""
        step = self.step(attempt)
        return step * (1 - self.jitter) + rng.uniform(0, step * self.jitter)


@dataclass(frozen=True, slots=True)
class FeedSettings:
    """Timing and sizing knobs shared by all websocket feeds (seconds, items)."""

    backoff: Backoff = Backoff()
    idle_timeout: float = 60.0
    connect_timeout: float = 10.0
    close_timeout: float = 2.0
    start_timeout: float = 10.0
    buffer_size: int = 10_000
    max_retries: int | None = None
    max_retry_after: float = 300.0

    def __post_init__(self) -> None:
        if min(self.idle_timeout, self.connect_timeout, self.close_timeout) <= 0:
            raise ValueError("timeouts must be positive")
        if self.start_timeout < 0:
            raise ValueError("start_timeout must be >= 0")
        if self.buffer_size < 1:
            raise ValueError("buffer_size must be >= 1")
        if self.max_retries is not None and self.max_retries < 0:
            raise ValueError("max_retries must be >= 0")


class FeedSocket(Protocol):
    """The part of a websocket connection the runner uses (a real one or a test double)."""

    async def send(self, message: str) -> None: ...

    async def recv(self) -> str | bytes: ...

    async def close(self) -> None: ...


Connector = Callable[[str], Awaitable[FeedSocket]]


def websocket_connector(settings: FeedSettings) -> Connector:
    """Open real connections with ``websockets`` (protocol pings on, short close wait)."""

    async def open_socket(url: str) -> FeedSocket:
        return await connect(
            url,
            open_timeout=settings.connect_timeout,
            close_timeout=settings.close_timeout,
            ping_interval=20,
            ping_timeout=20,
            max_queue=256,
        )

    return open_socket


class _Buffer:
    """Single-consumer bounded FIFO that drops its oldest item when full."""

    def __init__(self, maxsize: int) -> None:
        self._items: deque[StreamItem] = deque()
        self._maxsize = maxsize
        self._event = asyncio.Event()
        self._closed = False
        self._unreported_drops = 0
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._items)

    def put(self, item: StreamItem) -> None:
        if self._closed:
            return
        if len(self._items) >= self._maxsize:
            self._items.popleft()
            self.dropped += 1
            self._unreported_drops += 1
        self._items.append(item)
        self._event.set()

    def close(self) -> None:
        self._closed = True
        self._event.set()

    async def get(self, source: str) -> StreamItem | None:
        """Next item, an overflow notice first if items were dropped, ``None`` at the end."""
        while True:
            if self._unreported_drops:
                missing, self._unreported_drops = self._unreported_drops, 0
                return FeedGap(source=source, symbol=None, kind="overflow", missing=missing)
            if self._items:
                return self._items.popleft()
            if self._closed:
                return None
            self._event.clear()
            await self._event.wait()


class _StreamIterator:
    """Async iterator over the feed buffer; ``with_gaps`` decides if markers are yielded."""

    def __init__(self, feed: WebsocketFeed, *, with_gaps: bool) -> None:
        self._feed = feed
        self._with_gaps = with_gaps

    def __aiter__(self) -> _StreamIterator:
        return self

    async def __anext__(self) -> StreamItem:
        while True:
            item = await self._feed._buffer.get(self._feed.name)
            if item is None:
                failure = self._feed.failure
                if failure is not None:
                    raise failure
                raise StopAsyncIteration
            if self._with_gaps or isinstance(item, Tick):
                return item


class _TickIterator:
    """The ticks-only view required by :class:`tradegraph.marketdata.ticks.Feed`."""

    def __init__(self, feed: WebsocketFeed) -> None:
        self._inner = _StreamIterator(feed, with_gaps=False)

    def __aiter__(self) -> _TickIterator:
        return self

    async def __anext__(self) -> Tick:
        item = await self._inner.__anext__()
        assert isinstance(item, Tick)
        return item


class WebsocketFeed(abc.ABC):
    """Base class of websocket market-data feeds; implements the ``Feed`` protocol.

    Subclasses implement :meth:`url`, :meth:`handle_message` and optionally
    :meth:`on_connect` (send subscriptions), :meth:`on_keepalive` (with
    ``keepalive_interval``) and :meth:`on_disconnect`. They deliver data with
    :meth:`emit` / :meth:`emit_gap` and talk to the venue with :meth:`send`.

    Iterate once, from one consumer: ``async for tick in feed`` (ticks only) or
    ``async for item in feed.stream()`` (ticks and :class:`FeedGap` markers).
    """

    #: Seconds between :meth:`on_keepalive` calls while connected (``None``: never).
    keepalive_interval: float | None = None

    def __init__(
        self,
        name: str,
        *,
        settings: FeedSettings | None = None,
        connector: Connector | None = None,
        sleep: Callable[[float], Awaitable[None]] | None = None,
        rng: random.Random | None = None,
        on_gap: Callable[[FeedGap], None] | None = None,
        stop_event: asyncio.Event | None = None,
    ) -> None:
        self.name = name
        self.settings = settings or FeedSettings()
        self._connector = connector or websocket_connector(self.settings)
        self._sleep = sleep or asyncio.sleep
        self._rng = rng or random.Random()
        self._on_gap = on_gap
        self.stop_event = stop_event or asyncio.Event()
        self._buffer = _Buffer(self.settings.buffer_size)
        self._socket: FeedSocket | None = None
        self._connected = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._healthy = False
        self.failure: FeedError | None = None
        self.last_error: str | None = None
        self.last_gap: FeedGap | None = None
        # Counters (monotonic, for metrics).
        self.connects = 0
        self.reconnects = 0
        self.connect_failures = 0
        self.disconnects = 0
        self.messages = 0
        self.ticks = 0
        self.gaps = 0
        self.parse_errors = 0
        self.server_errors = 0
        self.idle_timeouts = 0
        self.duplicates = 0
        # Failed attempts since a connection last delivered a tick (a gauge: 0 = healthy).
        self.consecutive_failures = 0

    # -- venue hooks ------------------------------------------------------------------

    @abc.abstractmethod
    def url(self) -> str:
        """The websocket URL to (re)connect to."""

    @abc.abstractmethod
    async def handle_message(self, raw: str | bytes) -> None:
        """Turn one frame into :meth:`emit` / :meth:`emit_gap` calls.

        Raise a :data:`PARSE_ERRORS` exception for a malformed frame (counted, skipped),
        :class:`ReconnectRequested` for a transient venue error, :class:`FeedError` to
        give up for good.
        """

    async def on_connect(self) -> None:  # noqa: B027 - optional hook
        """Send subscriptions; called after each (re)connect, before reading."""

    async def on_keepalive(self) -> None:  # noqa: B027 - optional hook
        """Send an application-level keep-alive (every ``keepalive_interval`` seconds)."""

    def on_disconnect(self) -> None:  # noqa: B027 - optional hook
        """Forget per-connection state (pending requests, subscription ids)."""

    # -- helpers for adapters -----------------------------------------------------------

    async def send(self, message: str) -> None:
        """Send a frame on the current connection (only valid inside the hooks)."""
        if self._socket is None:
            raise ReconnectRequested("not connected")
        await self._socket.send(message)

    def emit(self, tick: Tick) -> None:
        """Queue a tick for the consumer; a healthy tick also resets the backoff."""
        self.ticks += 1
        if not self._healthy:
            self._healthy = True
            self.consecutive_failures = 0
        self._buffer.put(tick)

    def emit_gap(self, gap: FeedGap) -> None:
        """Record a venue-side gap: counter, log, callback, and an in-band marker."""
        self.gaps += 1
        self.last_gap = gap
        log.warning(
            "feed gap",
            extra={
                "feed": self.name,
                "symbol": gap.symbol,
                "kind": gap.kind,
                "missing": gap.missing,
                "last_ts": gap.last_ts,
                "next_ts": gap.next_ts,
                "after_reconnect": gap.after_reconnect,
            },
        )
        if self._on_gap is not None:
            try:
                self._on_gap(gap)
            except Exception:
                log.exception("on_gap callback failed", extra={"feed": self.name})
        self._buffer.put(gap)

    # -- public API ---------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """Whether a connection is open and subscribed right now."""
        return self._connected.is_set()

    @property
    def dropped(self) -> int:
        """Items the bounded buffer discarded because the consumer was too slow."""
        return self._buffer.dropped

    @property
    def buffered(self) -> int:
        """Items waiting for the consumer."""
        return len(self._buffer)

    def counters(self) -> dict[str, int]:
        """All counters at once, e.g. to export as ``feed_<name>_total{feed=...}``."""
        return {
            "connects": self.connects,
            "reconnects": self.reconnects,
            "connect_failures": self.connect_failures,
            "disconnects": self.disconnects,
            "messages": self.messages,
            "ticks": self.ticks,
            "gaps": self.gaps,
            "parse_errors": self.parse_errors,
            "server_errors": self.server_errors,
            "idle_timeouts": self.idle_timeouts,
            "duplicates": self.duplicates,
            "dropped": self.dropped,
            "consecutive_failures": self.consecutive_failures,
        }

    async def start(self) -> None:
        """Start the background loop; return once subscribed (or after ``start_timeout``).

        A venue that is down at start-up does not fail the caller: the loop keeps
        retrying in the background (``connected`` tells). Only a feed that gave up for
        good (``FeedError``) raises here.
        """
        if self._task is not None:
            return
        if self.stop_event.is_set():
            raise RuntimeError(f"feed {self.name} was stopped; create a new one")
        self._task = asyncio.create_task(self._run(), name=f"feed:{self.name}")
        self._watcher = asyncio.create_task(self._watch_stop(), name=f"feed:{self.name}:stop")
        self._task.add_done_callback(self._on_run_done)
        ready = asyncio.create_task(self._connected.wait(), name=f"feed:{self.name}:ready")
        try:
            await asyncio.wait(
                {ready, self._task},
                timeout=self.settings.start_timeout,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            ready.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ready
        if self.failure is not None:
            raise self.failure
        if not self.connected and not self._task.done():
            log.warning("feed not connected yet, retrying in background", extra={"feed": self.name})

    async def wait_connected(self) -> None:
        """Wait until a connection is open and subscribed."""
        await self._connected.wait()

    async def stop(self) -> None:
        """Stop the loop, close the socket, end iteration; safe to call more than once."""
        self.stop_event.set()
        for task in (self._task, self._watcher):
            if task is None:
                continue
            if not task.done():
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._buffer.close()

    def stream(self) -> AsyncIterator[Tick | FeedGap]:
        """Ticks and :class:`FeedGap` markers in arrival order.

        An ``overflow`` marker is yielded just before the first item that survived a
        drop. Ends after :meth:`stop` once the buffer is drained; raises
        :class:`FeedError` instead if the feed gave up.
        """
        return _StreamIterator(self, with_gaps=True)

    def __aiter__(self) -> AsyncIterator[Tick]:
        """Ticks only (the ``Feed`` protocol); gaps still reach ``on_gap`` and counters."""
        return _TickIterator(self)

    # -- the loop -----------------------------------------------------------------------

    async def _watch_stop(self) -> None:
        await self.stop_event.wait()
        if self._task is not None:
            self._task.cancel()

    def _on_run_done(self, _task: asyncio.Task[None]) -> None:
        self._buffer.close()
        if self._watcher is not None:
            self._watcher.cancel()

    async def _run(self) -> None:
        try:
            while not self.stop_event.is_set():
                retry_after = await self._connect_and_read()
                self.consecutive_failures += 1
                limit = self.settings.max_retries
                if limit is not None and self.consecutive_failures > limit:
                    raise FeedError(
                        f"{self.name}: gave up after {self.consecutive_failures} failed "
                        f"attempts ({self.last_error})"
                    )
                delay = self.settings.backoff.delay(self.consecutive_failures, self._rng)
                if retry_after is not None:
                    delay = max(delay, min(retry_after, self.settings.max_retry_after))
                log.info(
                    "feed reconnecting",
                    extra={
                        "feed": self.name,
                        "attempt": self.consecutive_failures,
                        "delay_s": round(delay, 3),
                        "reason": self.last_error,
                    },
                )
                await self._sleep(delay)
        except FeedError as exc:
            self.failure = exc
            log.error("feed failed", extra={"feed": self.name, "reason": str(exc)})

    async def _connect_and_read(self) -> float | None:
        """One connection's lifetime; returns a venue-requested wait (Retry-After), if any."""
        self._healthy = False
        try:
            socket = await self._connector(self.url())
        except InvalidStatus as exc:
            self.connect_failures += 1
            self.last_error = f"handshake refused: HTTP {exc.response.status_code}"
            return _retry_after(exc)
        except (OSError, TimeoutError, WebSocketException) as exc:
            self.connect_failures += 1
            self.last_error = f"connect failed: {type(exc).__name__}: {exc}"
            return None
        self.connects += 1
        if self.connects > 1:
            self.reconnects += 1
        self._socket = socket
        try:
            await self.on_connect()
            self._connected.set()
            await self._read(socket)
        except ConnectionClosed as exc:
            self.last_error = f"connection closed: {exc}"
        except ReconnectRequested as exc:
            self.last_error = str(exc)
        except (OSError, TimeoutError, WebSocketException) as exc:
            self.last_error = f"{type(exc).__name__}: {exc}"
        except FeedError:
            raise
        except Exception as exc:
            # A bug in an adapter must not kill a feed the platform depends on.
            log.exception("feed loop error", extra={"feed": self.name})
            self.last_error = f"unexpected {type(exc).__name__}: {exc}"
        finally:
            self._connected.clear()
            self._socket = None
            self.disconnects += 1
            self.on_disconnect()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(self.settings.close_timeout):
                    await socket.close()
        return None

    async def _read(self, socket: FeedSocket) -> None:
        loop = asyncio.get_running_loop()
        idle = self.settings.idle_timeout
        every = self.keepalive_interval
        last_rx = loop.time()
        next_keepalive = last_rx + every if every else float("inf")
        while True:
            now = loop.time()
            if now >= next_keepalive:
                assert every is not None
                await self.on_keepalive()
                next_keepalive = now + every
            idle_deadline = last_rx + idle
            try:
                async with asyncio.timeout_at(min(idle_deadline, next_keepalive)):
                    raw = await socket.recv()
            except TimeoutError:
                if loop.time() >= idle_deadline:
                    self.idle_timeouts += 1
                    raise ReconnectRequested(f"no message for {idle:g}s") from None
                continue
            last_rx = loop.time()
            self.messages += 1
            try:
                await self.handle_message(raw)
            except PARSE_ERRORS as exc:
                self._parse_error(raw, exc)

    def _parse_error(self, raw: str | bytes, exc: BaseException) -> None:
        self.parse_errors += 1
        if self.parse_errors <= 10 or self.parse_errors % 1000 == 0:
            log.warning(
                "feed frame skipped",
                extra={
                    "feed": self.name,
                    "error": f"{type(exc).__name__}: {exc}",
                    "frame": (raw if isinstance(raw, str) else repr(raw))[:200],
                    "parse_errors": self.parse_errors,
                },
            )


def _retry_after(exc: InvalidStatus) -> float | None:
    """Honour ``Retry-After`` on a refused handshake (Binance answers 429/418 with one)."""
    value = exc.response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if seconds >= 0 else None


def symbol_index(specs: Sequence[SymbolSpec]) -> dict[str, SymbolSpec]:
    """Specs keyed by venue symbol; duplicate venue or platform symbols are refused."""
    if not specs:
        raise ValueError("at least one symbol is required")
    by_venue: dict[str, SymbolSpec] = {}
    seen: set[str] = set()
    for spec in specs:
        if spec.venue in by_venue or spec.symbol in seen:
            raise ValueError(f"duplicate symbol {spec.venue} -> {spec.symbol}")
        by_venue[spec.venue] = spec
        seen.add(spec.symbol)
    return by_venue
