"""Market data at run time: ticks in, candles and marks out.

``MarketDataService`` is the one place ticks meet the rest of the platform:

* **Sources.** The market simulator (the embedded default, for SIM-venue instruments),
  Binance/Deriv websocket feeds (off unless configured) and the exchange's own CLOB
  trades (the ``trades:SYM`` topics, with a replay from the ``trades`` table on start and
  after a stream gap, so no trade is missed). Every source ends in :meth:`ingest`.
* **Candles.** Ticks go through one :class:`CandleAggregator`. Closed M1 bars are
  upserted and every coarser bar that closed or was corrected is rebuilt *from the stored
  finer bars* (see :mod:`tradegraph.marketdata.store`), all in one transaction per
  flush; only then are the closed bars published on ``candles:SYM:RES``. Forming bars
  stay in memory and are published at most every ``candle_publish_interval_seconds``.
  After a restart the part of each forming bar from before it (stored finer bars) is
  added back from the database, and bars that closed while nothing ran are rebuilt.
* **Marks.** The latest price of each SIM-venue symbol goes to the sequencer as a
  ``mark_price`` command (it triggers stops there), at most once per
  ``market_mark_interval_seconds`` and only when it changed.
* **Ticker and stats** for SIM instruments, which have no trades: last price and
  bid/ask from the feed, rolling 24 h figures from the stored M1 bars.

Exactly one process produces: the API process in the embedded mode; in the remote mode
the worker that holds the ``marketdata`` leader lock (the others take over if it dies).
Workers that do not produce keep the latest forming bars from the pub/sub topics, so any
worker answers ``candles`` with the forming bar included.

Every loop has a stop signal, a backoff after failures and counters (exported on
``/metrics``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine, Iterable, Iterator, Sequence
from dataclasses import dataclass, fields, replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Final

import numpy as np
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import select

from tradegraph.bus import CommandBus
from tradegraph.config import Settings
from tradegraph.db import Database
from tradegraph.errors import DomainError, NotFound
from tradegraph.exchange import models as em
from tradegraph.marketdata.candles import (
    ALL_RESOLUTIONS,
    Bar,
    BarArrays,
    BarEvent,
    BarEventKind,
    CandleAggregator,
    Resolution,
)
from tradegraph.marketdata.feeds.base import FeedGap, SymbolSpec, WebsocketFeed
from tradegraph.marketdata.feeds.binance import BinanceTradeFeed
from tradegraph.marketdata.feeds.deriv import DerivTickFeed
from tradegraph.marketdata.simulator import DEFAULT_SYMBOLS, MarketSimulator, SymbolConfig
from tradegraph.marketdata.store import CandleStore, WindowStats
from tradegraph.marketdata.ticks import Tick, datetime_to_ms
from tradegraph.pubsub import PubSub, is_gap

__all__ = [
    "DEFAULT_BARS",
    "MAX_BARS",
    "CandleSeries",
    "MarketDataService",
    "SymbolMeta",
    "bar_message",
    "parse_pairs",
]

log = logging.getLogger("tradegraph.marketdata")

MAX_BARS: Final = 5_000  # per candles call / UDF history request
DEFAULT_BARS: Final = 500  # when neither from nor countBack is given
DAY_MS: Final = 86_400_000
LOOP_INTERVAL: Final = 0.1  # seconds between producer steps (simulator ticks, closes)
FLUSH_INTERVAL: Final = 0.5  # closed bars wait at most this long for the database
TICKER_INTERVAL: Final = 0.5  # SIM ticker updates per symbol, at most
STATS_REFRESH: Final = 5.0  # seconds a 24 h window read from the database is reused
MAX_PENDING: Final = 100_000  # closed M1 bars kept while the database is down
CLOB_REPLAY_LIMIT: Final = 500_000  # trades replayed per symbol on start
MAX_BACKOFF: Final = 5.0
RELOAD_INTERVAL: Final = 5.0  # seconds between instrument reloads caused by unknown symbols
_CLOSED: Final = "CLOSED"
_CORRECTION: Final = "CORRECTION"
_FORMING: Final = "FORMING"


@dataclass(frozen=True, slots=True)
class SymbolMeta:
    """What market data needs to know about an instrument."""

    symbol: str
    venue: em.Venue
    base: str
    quote: str
    price_decimals: int
    qty_decimals: int
    tick: int
    description: str
    kind: str  # TradingView symbol type: forex, commodity, index, crypto

    @property
    def is_sim(self) -> bool:
        """Priced by a feed (simulator, Binance, Deriv) rather than by CLOB trades."""
        return self.venue is em.Venue.SIM


@dataclass(frozen=True, slots=True)
class CandleSeries:
    """The answer to a candles range request: closed bars, then the forming one."""

    meta: SymbolMeta
    resolution: Resolution
    closed: BarArrays  # stored bars, ascending
    forming: Bar | None  # the bar still forming, when it falls inside the range

    def __len__(self) -> int:
        return len(self.closed) + (self.forming is not None)

    def bars(self) -> list[Bar]:
        """Everything as :class:`Bar` objects, forming bar last."""
        out = self.closed.to_bars(self.meta.symbol, self.resolution)
        if self.forming is not None:
            out.append(self.forming)
        return out

    def columns(self) -> BarArrays:
        """Everything as int64 columns, forming bar last."""
        f = self.forming
        if f is None:
            return self.closed
        c = self.closed
        extra = (f.ts, f.open, f.high, f.low, f.close, f.volume, f.trades)
        cols = (c.ts, c.open, c.high, c.low, c.close, c.volume, c.trades)
        return BarArrays(*(np.append(col, np.int64(x)) for col, x in zip(cols, extra, strict=True)))


@dataclass
class Counters:
    """Monotonic counters (and a few gauges) of the service, for ``/metrics`` and tests."""

    ticks: int = 0
    sim_ticks: int = 0
    clob_trades: int = 0
    clob_replayed: int = 0
    clob_gaps: int = 0
    feed_gaps: int = 0
    flushes: int = 0
    flush_errors: int = 0
    bars_written: int = 0
    bars_dropped: int = 0
    published: int = 0
    publish_errors: int = 0
    marks_sent: int = 0
    mark_errors: int = 0
    loop_errors: int = 0
    producer_starts: int = 0


def parse_pairs(value: str) -> list[tuple[str, str]]:
    """``"BTCUSDT:BTCUSD, R_100:R100"`` -> ``[("BTCUSDT", "BTCUSD"), ...]``."""
    pairs = []
    for item in value.split(","):
        item = item.strip()
        if not item:
            continue
        venue, sep, ours = item.partition(":")
        if not sep or not venue.strip() or not ours.strip():
            raise ValueError(f"expected VENUE:SYMBOL, got {item!r}")
        pairs.append((venue.strip(), ours.strip()))
    return pairs


def bar_message(topic: str, seq: int, kind: str, bar: Bar) -> dict[str, Any]:
    """The ``candles:SYM:RES`` event envelope (integers in minor units, ts in ms)."""
    return {
        "topic": topic,
        "seq": seq,
        "ts": datetime.now(UTC).isoformat(),
        "type": kind,
        "data": {
            "symbol": bar.symbol,
            "resolution": bar.resolution.name,
            "ts": bar.ts,
            "open": bar.open,
            "high": bar.high,
            "low": bar.low,
            "close": bar.close,
            "volume": bar.volume,
            "trades": bar.trades,
        },
    }


def bar_from_message(data: dict[str, Any]) -> Bar:
    """Inverse of :func:`bar_message`'s ``data``."""
    return Bar(
        data["symbol"],
        Resolution[data["resolution"]],
        int(data["ts"]),
        int(data["open"]),
        int(data["high"]),
        int(data["low"]),
        int(data["close"]),
        int(data["volume"]),
        int(data["trades"]),
    )


def topic_for(symbol: str, resolution: Resolution) -> str:
    """Pub/sub topic of a symbol's bars at one resolution."""
    return f"candles:{symbol}:{resolution.name}"


def _merge(earlier: Bar, later: Bar) -> Bar:
    """One bar from two parts of the same bucket, ``earlier`` entirely before ``later``."""
    return Bar(
        later.symbol,
        later.resolution,
        later.ts,
        earlier.open,
        max(earlier.high, later.high),
        min(earlier.low, later.low),
        later.close,
        earlier.volume + later.volume,
        earlier.trades + later.trades,
    )


def change_percent(open_: int, last: int) -> Decimal | None:
    """``(last - open) / open x 100`` to two places (None without an open)."""
    if not open_:
        return None
    return (Decimal(last - open_) * 100 / Decimal(open_)).quantize(Decimal("0.01"))


class _Collector(Collector):
    """Exports the service's counters on the app's registry."""

    def __init__(self, service: MarketDataService) -> None:
        self.service = service

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        counters = CounterMetricFamily(
            "tradegraph_marketdata_events",
            "Market-data service events by kind.",
            labels=["kind"],
        )
        for name, value in self.service.counters().items():
            counters.add_metric([name], value)
        yield counters
        gauge = GaugeMetricFamily(
            "tradegraph_marketdata_producing",
            "1 when this process produces candles and marks.",
        )
        gauge.add_metric([], 1 if self.service.producing else 0)
        yield gauge


class MarketDataService:
    """Feeds, simulator, candle aggregation and persistence, marks, SIM tickers."""

    def __init__(
        self,
        settings: Settings,
        db: Database,
        pubsub: PubSub,
        bus: CommandBus,
        *,
        produce: bool | None = None,
        clock: Callable[[], float] = time.time,
        registry: Any | None = None,
    ) -> None:
        self.settings = settings
        self.db = db
        self.pubsub = pubsub
        self.bus = bus
        self.store = CandleStore(db)
        self.clock = clock
        self.embedded = settings.engine_mode == "embedded"
        # produce: True/False force the role; None decides by the mode (embedded: always;
        # remote: contend for the leader lock with the other workers).
        self._produce_always = self.embedded if produce is None else produce
        self._contend = produce is None and not self.embedded
        self.grace_ms = settings.candle_grace_ms
        # Bars close this long after their end, so a slightly late tick still lands in
        # the forming bar rather than in a correction.
        self.close_delay_ms = min(1_000, self.grace_ms)
        self.aggregator = CandleAggregator(grace_ms=self.grace_ms)
        self.stats = Counters()
        self.producing = False
        self.meta_by_symbol: dict[str, SymbolMeta] = {}
        self.simulator: MarketSimulator | None = None
        self.feeds: list[WebsocketFeed] = []
        # what a restart found stored for the buckets forming at start, per (symbol, res)
        self._base: dict[tuple[str, Resolution], Bar] = {}
        self._pending_m1: dict[tuple[str, int], Bar] = {}
        self._jobs: dict[tuple[str, Resolution, int], str] = {}  # bucket -> CLOSED/CORRECTION
        self._dirty: set[str] = set()
        self._ticker_dirty: set[str] = set()
        self._published: dict[tuple[str, Resolution], Bar] = {}
        self._seq: dict[str, int] = {}
        self._last: dict[str, Tick] = {}  # latest tick per symbol (SIM tickers, quotes)
        self._marks: dict[str, int] = {}  # latest price per SIM symbol, to be marked
        self._marked: dict[str, int] = {}
        self._remote_forming: dict[tuple[str, Resolution], Bar] = {}
        self._stats_cache: tuple[float, dict[str, WindowStats]] | None = None
        self._last_flush = 0.0
        self._last_publish = 0.0
        self._last_ticker = 0.0
        self._flush_backoff = 0.0
        self._flush_retry_at = 0.0
        self._stop = asyncio.Event()
        self._flush_lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []
        self._producer_tasks: list[asyncio.Task[None]] = []
        self._clob_last_id: dict[str, int] = {}
        self._loaded_at = float("-inf")
        if registry is not None:
            registry.register(_Collector(self))

    # ------------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Load instruments, then produce (embedded) or follow and contend (remote)."""
        self._stop.clear()
        await self.load_instruments()
        if self._produce_always:
            await self._start_producer()
            return
        self._spawn(self._follow_loop(), "marketdata:follow")
        if self._contend and not self.db.is_sqlite:
            self._spawn(self._leader_loop(), "marketdata:leader")

    async def stop(self) -> None:
        """Stop every loop, flush what closed, stop the feeds; safe to call twice."""
        self._stop.set()
        await self._stop_producer()
        if self._tasks:
            # Let the loops see the stop signal and finish (the leader loop releases its
            # lock on the way out); cancel only what does not end in time.
            await asyncio.wait(self._tasks, timeout=5)
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        self._tasks.append(asyncio.create_task(coro, name=name))

    def counters(self) -> dict[str, int]:
        """Every counter, plus the aggregator's and the feeds'."""
        out = {f.name: getattr(self.stats, f.name) for f in fields(self.stats)}
        out["ticks_rejected_late"] = self.aggregator.rejected
        out["late_corrections"] = self.aggregator.corrections
        out["pending_bars"] = len(self._pending_m1) + len(self._jobs)
        for feed in self.feeds:
            for name, value in feed.counters().items():
                out[f"feed_{feed.name}_{name}"] = value
        return out

    async def load_instruments(self) -> None:
        """(Re)read the instruments table into :attr:`meta_by_symbol`."""
        configs = {c.symbol: c for c in DEFAULT_SYMBOLS}
        async with self.db.session() as session:
            rows = list(await session.scalars(select(em.Instrument)))
        metas = {}
        for r in rows:
            cfg = configs.get(r.symbol)
            sim = r.venue is em.Venue.SIM
            metas[r.symbol] = SymbolMeta(
                symbol=r.symbol,
                venue=r.venue,
                base=r.base_asset,
                quote=r.quote_asset,
                price_decimals=r.price_decimals,
                qty_decimals=r.qty_decimals,
                tick=r.tick,
                description=cfg.description if cfg and sim else f"{r.base_asset} / {r.quote_asset}",
                kind=cfg.kind if cfg and sim else "crypto",
            )
        self.meta_by_symbol = metas
        self._loaded_at = time.monotonic()

    async def meta(self, symbol: str) -> SymbolMeta:
        """The instrument ``symbol`` or ``UNKNOWN_INSTRUMENT``.

        An unknown symbol re-reads the table (a new listing), at most every few seconds,
        so a stream of made-up symbols cannot turn into a stream of queries.
        """
        meta = self.meta_by_symbol.get(symbol)
        if meta is None and time.monotonic() - self._loaded_at >= RELOAD_INTERVAL:
            await self.load_instruments()
            meta = self.meta_by_symbol.get(symbol)
        if meta is None:
            raise NotFound(
                f"unknown instrument {symbol!r}", code="UNKNOWN_INSTRUMENT", field="symbol"
            )
        return meta

    def now_ms(self) -> int:
        """The service's clock in epoch milliseconds."""
        return int(self.clock() * 1000)

    # -------------------------------------------------------------------- producer

    async def recover(self, now_ms: int) -> None:
        """Become the producer as of ``now_ms``: rebuild coarser bars that closed while
        nothing ran, and take the stored part of each forming bar as its base."""
        self._base = {}
        for symbol in self.meta_by_symbol:
            try:
                await self.store.rebuild_since(symbol, now_ms)
                for res, bar in (await self.store.forming_base(symbol, now_ms)).items():
                    self._base[(symbol, res)] = bar
            except Exception:
                log.exception("candle catch-up failed", extra={"symbol": symbol})
        self.producing = True
        self.stats.producer_starts += 1

    async def _start_producer(self) -> None:
        """Catch up with the database, then run the sources and the step loop."""
        await self.recover(self.now_ms())
        tasks = self._producer_tasks
        clob = [m.symbol for m in self.meta_by_symbol.values() if not m.is_sim]
        for symbol in clob:
            tasks.append(asyncio.create_task(self._clob_loop(symbol), name=f"candles:{symbol}"))
        fed = await self._start_feeds()
        if self.settings.market_simulator:
            await self._build_simulator(exclude=fed)
        tasks.append(asyncio.create_task(self._producer_loop(), name="marketdata:producer"))
        tasks.append(asyncio.create_task(self._mark_loop(), name="marketdata:marks"))

    async def _stop_producer(self) -> None:
        tasks, self._producer_tasks = self._producer_tasks, []
        for feed in self.feeds:
            with contextlib.suppress(Exception):
                await feed.stop()
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self.feeds = []
        if self.producing:
            self.producing = False
            with contextlib.suppress(Exception):
                await self.flush()
            # Whatever was forming here is lost with the role; a later term starts clean
            # from the database (recover), as a fresh process would.
            self.aggregator = CandleAggregator(grace_ms=self.grace_ms)
            self._base = {}
            self._published = {}
            self._clob_last_id = {}

    async def _build_simulator(self, exclude: set[str]) -> None:
        """A simulator for the SIM instruments no real feed covers, resuming their prices."""
        configs = []
        for cfg in DEFAULT_SYMBOLS:
            meta = self.meta_by_symbol.get(cfg.symbol)
            if meta is None or not meta.is_sim or cfg.symbol in exclude:
                continue
            if meta.price_decimals != cfg.price_decimals:
                log.warning("simulator and instrument disagree on decimals: %s", cfg.symbol)
                continue
            configs.append(await self._resume(cfg, meta))
        if configs:
            self.simulator = MarketSimulator(
                self.settings.market_simulator_seed, self.now_ms(), configs
            )

    async def _resume(self, cfg: SymbolConfig, meta: SymbolMeta) -> SymbolConfig:
        """The simulator config in the instrument's units, starting at the last close."""
        scale = 10 ** (meta.qty_decimals - cfg.qty_decimals)
        mean = max(1, round(cfg.mean_size * scale))
        last = await self.store.last_bar(meta.symbol)
        start = cfg.start_price
        if last is not None:
            start = Decimal(last.close).scaleb(-meta.price_decimals)
        return replace(cfg, qty_decimals=meta.qty_decimals, mean_size=mean, start_price=start)

    async def _start_feeds(self) -> set[str]:
        """Start the configured websocket feeds; return the symbols they cover."""
        covered: set[str] = set()
        s = self.settings
        for kind, raw in (("binance", s.market_binance_symbols), ("deriv", s.market_deriv_symbols)):
            specs = []
            for venue, ours in parse_pairs(raw):
                meta = self.meta_by_symbol.get(ours)
                if meta is None or not meta.is_sim:
                    log.warning("feed symbol %s is not a SIM instrument; skipped", ours)
                    continue
                specs.append(SymbolSpec(venue, ours, meta.price_decimals, meta.qty_decimals))
            if not specs:
                continue
            feed: WebsocketFeed
            if kind == "binance":
                feed = BinanceTradeFeed(specs, base_url=s.market_binance_url)
            elif s.market_deriv_url or s.deriv_app_id.isdigit():
                url = s.market_deriv_url or f"{s.deriv_ws_url}?app_id={s.deriv_app_id}"
                feed = DerivTickFeed(specs, url=url)
            else:
                log.error("Deriv feed not started: set TRADEGRAPH_DERIV_APP_ID (numeric)")
                continue
            self.feeds.append(feed)
            covered.update(spec.symbol for spec in specs)
            self._producer_tasks.append(
                asyncio.create_task(self._feed_loop(feed), name=f"feed:{feed.name}")
            )
        return covered

    async def _feed_loop(self, feed: WebsocketFeed) -> None:
        """Ticks of one feed into :meth:`ingest`; the feed reconnects by itself."""
        try:
            await feed.start()
            async for item in feed.stream():
                if isinstance(item, FeedGap):
                    self.stats.feed_gaps += 1
                else:
                    self.ingest(item)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("feed stopped", extra={"feed": feed.name})

    async def _producer_loop(self) -> None:
        """Simulator ticks and the clock: close bars, flush, publish; back off on errors."""
        backoff = 0.0
        while not self._stop.is_set():
            try:
                now = self.now_ms()
                if self.simulator is not None:
                    for tick in self.simulator.advance(now):
                        self.stats.sim_ticks += 1
                        self.ingest(tick)
                await self.step(now)
                backoff = 0.0
            except asyncio.CancelledError:
                raise
            except Exception:
                self.stats.loop_errors += 1
                log.exception("market-data step failed")
                backoff = min(MAX_BACKOFF, max(0.1, backoff * 2))
            await self._sleep(LOOP_INTERVAL + backoff)

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)

    # -------------------------------------------------------------------- ingestion

    def ingest(self, tick: Tick) -> None:
        """One tick from any source into the candles, the marks and the tickers."""
        rejected = self.aggregator.rejected
        events = self.aggregator.add(tick.symbol, tick.price, tick.size, tick.ts)
        if events:
            self._collect(events)
        self.stats.ticks += 1
        if self.aggregator.rejected != rejected:
            return  # older than the grace window: stale for marks and tickers too
        symbol = tick.symbol
        self._dirty.add(symbol)
        meta = self.meta_by_symbol.get(symbol)
        if meta is not None and meta.is_sim:
            last = self._last.get(symbol)
            if last is None or tick.ts >= last.ts:
                self._last[symbol] = tick
                self._marks[symbol] = tick.price
                self._ticker_dirty.add(symbol)

    def _collect(self, events: Iterable[BarEvent]) -> None:
        for ev in events:
            bar = ev.bar
            if bar.resolution is Resolution.M1:
                self._pending_m1[(bar.symbol, bar.ts)] = bar
            key = (bar.symbol, bar.resolution, bar.ts)
            if ev.kind is BarEventKind.CLOSED or key not in self._jobs:
                self._jobs[key] = ev.kind.value
        if len(self._pending_m1) > MAX_PENDING:
            # The database has been down for a long time: keep the newest bars.
            for symbol, ts in sorted(self._pending_m1, key=lambda k: k[1])[: -MAX_PENDING // 2]:
                del self._pending_m1[(symbol, ts)]
                self._jobs.pop((symbol, Resolution.M1, ts), None)
                self.stats.bars_dropped += 1

    async def step(self, now_ms: int, *, force: bool = False) -> None:
        """Advance the clock to ``now_ms``: close bars, flush and publish when due."""
        close_at = now_ms - self.close_delay_ms
        events = self.aggregator.advance(close_at)
        if events:
            self._collect(events)
        for key, base in list(self._base.items()):
            if base.end_ts <= close_at:
                # Its bucket closed: rebuild it from the stored finer bars.
                del self._base[key]
                self._jobs.setdefault((base.symbol, base.resolution, base.ts), _CLOSED)
        mono = time.monotonic()
        if (self._pending_m1 or self._jobs) and (
            force or (mono - self._last_flush >= FLUSH_INTERVAL and mono >= self._flush_retry_at)
        ):
            self._last_flush = mono
            await self.flush()
        interval = self.settings.candle_publish_interval_seconds
        if force or mono - self._last_publish >= interval:
            self._last_publish = mono
            await self.publish_forming()
        if force or mono - self._last_ticker >= TICKER_INTERVAL:
            self._last_ticker = mono
            await self.publish_tickers(now_ms)

    async def flush(self) -> list[Bar]:
        """Persist closed bars and rebuilt buckets in one transaction, then publish them.

        Serialised: a second caller waits for the flush in progress, then writes what is
        left, so "flushed" means "in the database" for whoever awaited it.
        """
        async with self._flush_lock:
            return await self._flush()

    async def _flush(self) -> list[Bar]:
        if not self._pending_m1 and not self._jobs:
            return []
        m1, jobs = self._pending_m1, self._jobs
        self._pending_m1, self._jobs = {}, {}
        coarser = [k for k in jobs if k[1] is not Resolution.M1]
        try:
            written = await self.store.write(m1.values(), coarser)
        except Exception:
            # Put them back (bars that changed meanwhile are newer and win) and retry later.
            for key, bar in m1.items():
                self._pending_m1.setdefault(key, bar)
            for job, kind in jobs.items():
                self._jobs.setdefault(job, kind)
            self.stats.flush_errors += 1
            self._flush_backoff = min(MAX_BACKOFF, max(0.2, self._flush_backoff * 2))
            self._flush_retry_at = time.monotonic() + self._flush_backoff
            log.exception("writing %d candles failed; will retry", len(m1) + len(coarser))
            return []
        self._flush_backoff = 0.0
        self.stats.flushes += 1
        self.stats.bars_written += len(written)
        for bar in written:
            kind = jobs.get((bar.symbol, bar.resolution, bar.ts), _CORRECTION)
            await self._publish(bar, kind)
        return written

    async def _publish(self, bar: Bar, kind: str) -> None:
        topic = topic_for(bar.symbol, bar.resolution)
        seq = self._seq.get(topic, 0) + 1
        self._seq[topic] = seq
        try:
            await self.pubsub.publish(topic, bar_message(topic, seq, kind, bar))
            self.stats.published += 1
        except Exception:
            self.stats.publish_errors += 1

    async def publish_forming(self) -> None:
        """The forming bar of every resolution of every symbol that ticked, if it changed."""
        dirty, self._dirty = self._dirty, set()
        for symbol in dirty:
            for res in ALL_RESOLUTIONS:
                bar = self.forming(symbol, res)
                key = (symbol, res)
                if bar is None or self._published.get(key) == bar:
                    continue
                self._published[key] = bar
                await self._publish(bar, _FORMING)

    # ----------------------------------------------------------------------- marks

    async def _mark_loop(self) -> None:
        """Send changed SIM prices to the sequencer as mark-price commands, throttled."""
        interval = self.settings.market_mark_interval_seconds
        backoff = 0.0
        while not self._stop.is_set():
            await self._sleep(interval + backoff)
            try:
                failed = await self.send_marks()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("mark loop failed")
                failed = True
            backoff = min(MAX_BACKOFF, max(0.5, backoff * 2)) if failed else 0.0

    async def send_marks(self) -> bool:
        """One round of mark-price commands; True if any failed."""
        due = {s: p for s, p in self._marks.items() if self._marked.get(s) != p}
        if not due:
            return False
        timeout = max(1.0, self.settings.market_mark_interval_seconds * 2)
        results = await asyncio.gather(
            *(
                self.bus.request("mark_price", {"symbol": s, "price": p}, timeout=timeout)
                for s, p in due.items()
            ),
            return_exceptions=True,
        )
        failed = False
        for (symbol, price), result in zip(due.items(), results, strict=True):
            if isinstance(result, BaseException) or result.get("error"):
                failed = True
                self.stats.mark_errors += 1
                if isinstance(result, BaseException) and not isinstance(result, DomainError):
                    log.warning("mark price for %s failed: %r", symbol, result)
                continue
            self._marked[symbol] = price
            self.stats.marks_sent += 1
        return failed

    # ---------------------------------------------------------------- CLOB trades

    async def _clob_loop(self, symbol: str) -> None:
        """Trades of a CLOB instrument: replay from the table, then follow the topic.

        Subscribed before the replay, so nothing falls between the two; trade ids make
        the overlap harmless. A gap in the stream (overflow, Redis reconnect) is filled
        from the table again.
        """
        backoff = 0.0
        first = True
        while not self._stop.is_set():
            try:
                async with self.pubsub.subscribe(f"trades:{symbol}") as sub:
                    await self._replay_trades(symbol, initial=first)
                    first = False
                    backoff = 0.0
                    async for msg in sub:
                        if is_gap(msg):
                            self.stats.clob_gaps += 1
                            await self._replay_trades(symbol, initial=False)
                            continue
                        if msg.get("type") == "TRADE":
                            self._ingest_trade(msg["data"])
                # iteration ended: a final overflow marker; resubscribe and catch up
                self.stats.clob_gaps += 1
            except asyncio.CancelledError:
                raise
            except Exception:
                self.stats.loop_errors += 1
                log.exception("trades stream of %s failed", symbol)
                backoff = min(MAX_BACKOFF, max(0.2, backoff * 2))
                await self._sleep(backoff)

    def _ingest_trade(self, data: dict[str, Any]) -> None:
        trade_id = int(data["id"])
        symbol = data["symbol"]
        if trade_id <= self._clob_last_id.get(symbol, 0):
            return
        self._clob_last_id[symbol] = trade_id
        ts = datetime_to_ms(datetime.fromisoformat(data["ts"]))
        self.stats.clob_trades += 1
        self.ingest(Tick(symbol, int(data["price"]), int(data["qty"]), ts, "clob"))

    async def _replay_trades(self, symbol: str, *, initial: bool) -> None:
        """Ingest stored trades not seen yet: on start, those after the last stored
        minute; after a gap, those after the last trade id seen."""
        stmt = select(em.Trade.id, em.Trade.price, em.Trade.qty, em.Trade.created_at).where(
            em.Trade.symbol == symbol
        )
        last_id = self._clob_last_id.get(symbol)
        if last_id is not None:
            stmt = stmt.where(em.Trade.id > last_id)
        elif initial:
            last = await self.store.last_bar(symbol)
            if last is not None:
                since = datetime.fromtimestamp(last.end_ts / 1000, UTC)
                stmt = stmt.where(em.Trade.created_at >= since)
        stmt = stmt.order_by(em.Trade.id.desc()).limit(CLOB_REPLAY_LIMIT)
        async with self.db.session() as session:
            rows = list((await session.execute(stmt)).all())
        rows.reverse()
        for trade_id, price, qty, created_at in rows:
            if trade_id <= self._clob_last_id.get(symbol, 0):
                continue
            self._clob_last_id[symbol] = trade_id
            self.stats.clob_replayed += 1
            self.ingest(Tick(symbol, price, qty, datetime_to_ms(created_at), "clob"))

    # ------------------------------------------------------------------- followers

    async def _follow_loop(self) -> None:
        """Not producing: keep the latest forming bar of every symbol from the topics."""
        backoff = 0.0
        while not self._stop.is_set():
            try:
                await self._follow_once()
                backoff = 0.0
            except asyncio.CancelledError:
                raise
            except Exception:
                self.stats.loop_errors += 1
                log.exception("following candle topics failed")
                backoff = min(MAX_BACKOFF, max(0.2, backoff * 2))
            await self._sleep(backoff or 0.1)

    async def _follow_once(self) -> None:
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=10_000)

        async def pump(topic: str) -> None:
            async with self.pubsub.subscribe(topic) as sub:
                async for msg in sub:
                    if queue.full():
                        queue.get_nowait()
                    queue.put_nowait(msg)

        topics = [topic_for(s, r) for s in self.meta_by_symbol for r in ALL_RESOLUTIONS]
        pumps = [asyncio.create_task(pump(t)) for t in topics]
        try:
            while not self._stop.is_set():
                msg = await queue.get()
                if is_gap(msg):
                    continue
                bar = bar_from_message(msg["data"])
                key = (bar.symbol, bar.resolution)
                current = self._remote_forming.get(key)
                if msg["type"] == _FORMING:
                    if current is None or current.ts <= bar.ts:
                        self._remote_forming[key] = bar
                elif current is not None and current.ts <= bar.ts:
                    del self._remote_forming[key]  # closed: no longer forming
        finally:
            for task in pumps:
                task.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)

    async def _leader_loop(self) -> None:
        """Remote mode: whoever holds the ``marketdata`` lock produces; the rest wait."""
        from tradegraph.jobs.leader import LeaderLock

        lock = LeaderLock(self.db, f"{self.settings.redis_prefix}:marketdata")
        try:
            while not self._stop.is_set():
                acquire = asyncio.ensure_future(lock.acquire(wait=True))
                stopper = asyncio.ensure_future(self._stop.wait())
                await asyncio.wait({acquire, stopper}, return_when=asyncio.FIRST_COMPLETED)
                stopper.cancel()
                if not acquire.done():
                    acquire.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await acquire
                    return
                log.info("market data: this worker produces")
                await self._start_producer()
                lost = asyncio.ensure_future(lock.lost.wait())
                stopper = asyncio.ensure_future(self._stop.wait())
                await asyncio.wait({lost, stopper}, return_when=asyncio.FIRST_COMPLETED)
                lost.cancel()
                stopper.cancel()
                await self._stop_producer()
                lock.lost.clear()
        finally:
            await lock.release()

    # ------------------------------------------------------------------------ reads

    def forming(self, symbol: str, resolution: Resolution) -> Bar | None:
        """The bar forming now at ``resolution`` (None before its first tick)."""
        if not self.producing:
            bar = self._remote_forming.get((symbol, resolution))
            if bar is not None and bar.end_ts + self.grace_ms < self.now_ms():
                return None  # the producer went quiet: do not serve a stale bar forever
            return bar
        live = self.aggregator.forming(symbol, resolution)
        base = self._base.get((symbol, resolution))
        if base is None:
            return live
        if live is None:
            return base
        if live.ts == base.ts:
            return _merge(base, live)
        return live if live.ts > base.ts else base

    async def series(
        self,
        symbol: str,
        resolution: Resolution,
        *,
        from_ms: int | None = None,
        to_ms: int | None = None,
        count_back: int | None = None,
        max_bars: int = MAX_BARS,
    ) -> CandleSeries:
        """Bars in ``[from, to)`` (or the last ``count_back`` before ``to``), forming
        bar included, at most ``max_bars`` (the most recent ones)."""
        meta = await self.meta(symbol)
        if count_back is not None and not 1 <= count_back <= max_bars:
            raise DomainError(f"countBack must be between 1 and {max_bars}", field="countBack")
        if from_ms is not None and to_ms is not None and from_ms > to_ms:
            raise DomainError("from must not be after to", field="from")
        if count_back is not None:
            from_ms = None
            limit = count_back
        else:
            limit = max_bars if from_ms is not None else min(DEFAULT_BARS, max_bars)
        forming = self.forming(symbol, resolution)
        upper = to_ms
        included: Bar | None = None
        if forming is not None:
            if (to_ms is None or forming.ts < to_ms) and (from_ms is None or forming.ts >= from_ms):
                included = forming
                limit -= 1
            upper = forming.ts if upper is None else min(upper, forming.ts)
        closed = await self.store.columns(
            symbol, resolution, from_ms=from_ms, to_ms=upper, limit=limit
        )
        return CandleSeries(meta, resolution, closed, included)

    async def stats_24h(
        self, symbols: Sequence[str], *, now_ms: int | None = None
    ) -> dict[str, WindowStats]:
        """Rolling 24 h figures from the M1 bars stored, plus the forming minute."""
        now = self.now_ms() if now_ms is None else now_ms
        since = now - DAY_MS
        stats = await self.store.window_stats(symbols, since)
        return self._with_forming(stats, symbols, since)

    def _with_forming(
        self, stats: dict[str, WindowStats], symbols: Iterable[str], since: int
    ) -> dict[str, WindowStats]:
        out = dict(stats)
        for symbol in symbols:
            bar = self.forming(symbol, Resolution.M1)
            if bar is None or bar.ts < since:
                continue
            current = out.get(symbol)
            if current is not None and current.last_ts >= bar.ts:
                continue  # already stored (closed meanwhile)
            out[symbol] = WindowStats.of(bar) if current is None else current.merge(bar)
        return out

    def last_tick(self, symbol: str) -> Tick | None:
        """The latest feed tick of a SIM symbol (price, bid, ask), if any."""
        return self._last.get(symbol)

    # ---------------------------------------------------------------------- tickers

    async def publish_tickers(self, now_ms: int) -> None:
        """``ticker:SYM`` for SIM symbols (same shape as the exchange's CLOB tickers)."""
        dirty, self._ticker_dirty = self._ticker_dirty, set()
        if not dirty:
            return
        mono = time.monotonic()
        since = now_ms - DAY_MS
        if self._stats_cache is None or mono - self._stats_cache[0] >= STATS_REFRESH:
            sims = [m.symbol for m in self.meta_by_symbol.values() if m.is_sim]
            self._stats_cache = (mono, await self.store.window_stats(sims, since))
        stats = self._with_forming(self._stats_cache[1], dirty, since)
        stamp = datetime.fromtimestamp(now_ms / 1000, UTC).isoformat()
        for symbol in dirty:
            tick = self._last.get(symbol)
            if tick is None:
                continue
            window = stats.get(symbol)
            change = change_percent(window.open, tick.price) if window else None
            topic = f"ticker:{symbol}"
            data = {
                "symbol": symbol,
                "last": tick.price,
                "best_bid": tick.bid,
                "best_ask": tick.ask,
                "change_percent": None if change is None else str(change),
                "volume": window.volume if window else 0,
                "ts": stamp,
            }
            try:
                await self.pubsub.publish(topic, {"topic": topic, "type": "TICKER", "data": data})
                self.stats.published += 1
            except Exception:
                self.stats.publish_errors += 1
