"""A seeded, pure market simulator: the demo's price source.

No I/O and no wall clock: ``advance(now_ms)`` returns every tick up to ``now_ms``; the
async loop that calls it with the real clock (and the market-making bot that quotes
around it) live elsewhere. Ticks depend only on the seed and the simulated time, not on
how often ``advance`` is called, because each symbol draws from its own random stream
in tick order (and adding a symbol does not change the others).

Model per symbol: ticks arrive as a Poisson process (``ticks_per_second``); each tick
carries a jump with probability ``jump_probability`` whose log size is ``+/- jump_size``;
between ticks the mid follows geometric Brownian motion with annualised ``drift``. The
diffusion's volatility is chosen so that diffusion plus jumps realise the configured
annualised ``volatility`` (a 365-day, 24x7 year, as the simulated market never closes):
jumps fatten the tails without changing the volatility a chart shows. The exact mid is
kept unrounded; each tick publishes it and a bid/ask ``spread_bps`` apart, all rounded
onto the ``tick_size`` grid and never below one tick. Units follow
:mod:`tradegraph.marketdata.ticks` (integer minor units, ms).
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal

from tradegraph.errors import DomainError
from tradegraph.marketdata.ticks import Tick, price_to_minor

__all__ = [
    "DEFAULT_SYMBOLS",
    "MarketSimulator",
    "SimStats",
    "SymbolConfig",
]

_YEAR_S = 365.0 * 86_400.0
SOURCE = "sim"


@dataclass(frozen=True, slots=True)
class SymbolConfig:
    """How one simulated symbol behaves.

    ``price_decimals``/``tick_size`` define the price grid (``tick_size`` in minor units,
    e.g. 5 with 5 decimals = half-pip steps); ``qty_decimals`` and ``mean_size`` (minor
    units) shape the sizes used as tick volume.
    """

    symbol: str
    start_price: Decimal
    price_decimals: int
    volatility: float  # total annualised (diffusion + jumps), e.g. 0.07 = 7 %
    drift: float = 0.0  # annualised
    jump_probability: float = 0.0  # chance that a given tick carries a jump
    jump_size: float = 0.0  # absolute log move of a jump, e.g. 0.004 = ~0.4 %
    spread_bps: float = 1.0  # full bid-ask spread in basis points of mid
    ticks_per_second: float = 2.0
    tick_size: int = 1
    qty_decimals: int = 2
    mean_size: int = 100
    description: str = ""
    kind: str = "crypto"  # TradingView symbol type: forex, metal (commodity), index, crypto

    def __post_init__(self) -> None:
        problems = []
        if Decimal(self.start_price) <= 0:
            problems.append("start_price must be > 0")
        if not 0 <= self.price_decimals <= 12:
            problems.append("price_decimals must be within 0..12")
        if self.volatility < 0 or not math.isfinite(self.volatility):
            problems.append("volatility must be >= 0")
        if not math.isfinite(self.drift):
            problems.append("drift must be finite")
        if not 0.0 <= self.jump_probability <= 1.0:
            problems.append("jump_probability must be within 0..1")
        if self.jump_size < 0:
            problems.append("jump_size must be >= 0")
        if self.spread_bps < 0:
            problems.append("spread_bps must be >= 0")
        if not self.ticks_per_second > 0:
            problems.append("ticks_per_second must be > 0")
        if self.tick_size < 1:
            problems.append("tick_size must be >= 1")
        if self.mean_size < 1:
            problems.append("mean_size must be >= 1")
        if not problems and self.jump_variance > self.volatility**2:
            problems.append("jumps alone exceed the volatility; lower their size or probability")
        if problems:
            raise DomainError(f"{self.symbol}: " + "; ".join(problems), code="INVALID_CONFIG")

    @property
    def jump_variance(self) -> float:
        """Annualised log-variance contributed by jumps."""
        per_year = self.jump_probability * self.ticks_per_second * _YEAR_S
        return per_year * self.jump_size**2

    @property
    def diffusion_volatility(self) -> float:
        """Annualised volatility of the continuous part, so the total is ``volatility``."""
        return math.sqrt(max(0.0, self.volatility**2 - self.jump_variance))

    @property
    def start_minor(self) -> int:
        """Start price on the grid, in minor units."""
        raw = price_to_minor(self.start_price, self.price_decimals, exact=False)
        return max(self.tick_size, round(raw / self.tick_size) * self.tick_size)


def _default(
    symbol: str, price: str, decimals: int, kind: str, description: str, **kw: float
) -> SymbolConfig:
    params = {"jumps_per_day": 3.0, **kw}
    ticks_per_day = params["ticks_per_second"] * 86_400
    params["jump_probability"] = params.pop("jumps_per_day") / ticks_per_day
    return SymbolConfig(
        symbol=symbol,
        start_price=Decimal(price),
        price_decimals=decimals,
        kind=kind,
        description=description,
        volatility=params.pop("volatility"),
        jump_probability=params.pop("jump_probability"),
        jump_size=params.pop("jump_size"),
        spread_bps=params.pop("spread_bps"),
        ticks_per_second=params.pop("ticks_per_second"),
        qty_decimals=int(params.pop("qty_decimals", 2)),
        mean_size=int(params.pop("mean_size", 100)),
    )


# Levels, volatilities and spreads in the range these markets showed in 2024.
# fmt: off
DEFAULT_SYMBOLS: tuple[SymbolConfig, ...] = (
    _default("EURUSD", "1.08500", 5, "forex", "Euro / US Dollar",
             volatility=0.07, spread_bps=0.8, ticks_per_second=4, jump_size=0.001),
    _default("GBPUSD", "1.27000", 5, "forex", "British Pound / US Dollar",
             volatility=0.08, spread_bps=1.2, ticks_per_second=3, jump_size=0.0012),
    _default("USDJPY", "150.000", 3, "forex", "US Dollar / Japanese Yen",
             volatility=0.09, spread_bps=1.0, ticks_per_second=3, jump_size=0.0015),
    _default("XAUUSD", "2350.00", 2, "commodity", "Gold / US Dollar",
             volatility=0.15, spread_bps=2.0, ticks_per_second=2, jump_size=0.002),
    _default("US30", "39000.0", 1, "index", "Dow Jones Industrial Average",
             volatility=0.14, spread_bps=1.5, ticks_per_second=2, jump_size=0.002),
    _default("NAS100", "18000.0", 1, "index", "Nasdaq 100",
             volatility=0.20, spread_bps=1.5, ticks_per_second=2, jump_size=0.003),
    _default("BTCUSD", "65000.00", 2, "crypto", "Bitcoin / US Dollar",
             volatility=0.60, spread_bps=2.0, ticks_per_second=5, jump_size=0.006,
             jumps_per_day=4, qty_decimals=6, mean_size=20_000),
    _default("ETHUSD", "3200.00", 2, "crypto", "Ethereum / US Dollar",
             volatility=0.75, spread_bps=3.0, ticks_per_second=4, jump_size=0.008,
             jumps_per_day=4, qty_decimals=5, mean_size=50_000),
)
# fmt: on


@dataclass(slots=True)
class SimStats:
    """Counters per symbol, for tests and metrics."""

    ticks: int = 0
    jumps: int = 0


@dataclass(slots=True)
class _Walker:
    cfg: SymbolConfig
    rng: random.Random
    log_mid: float  # exact (unrounded) log mid price in minor units
    next_s: float  # time of the next tick, seconds since the simulator's start
    sigma: float  # diffusion volatility (annualised)
    stats: SimStats = field(default_factory=SimStats)
    last_s: float = 0.0
    last: Tick | None = None


class MarketSimulator:
    """Deterministic ticks for a set of symbols from a seed and a start time."""

    def __init__(
        self,
        seed: int,
        start_ms: int,
        symbols: Iterable[SymbolConfig] = DEFAULT_SYMBOLS,
    ) -> None:
        self.seed = seed
        self.start_ms = start_ms
        self._now_ms = start_ms
        self._walkers: dict[str, _Walker] = {}
        for cfg in symbols:
            if cfg.symbol in self._walkers:
                raise DomainError(f"duplicate symbol {cfg.symbol}", code="INVALID_CONFIG")
            # A string seed is hashed with SHA-512 by `random`: stable across processes.
            rng = random.Random(f"tradegraph-sim/{seed}/{cfg.symbol}")
            w = _Walker(cfg, rng, math.log(cfg.start_minor), 0.0, cfg.diffusion_volatility)
            w.next_s = rng.expovariate(cfg.ticks_per_second)
            self._walkers[cfg.symbol] = w

    @property
    def symbols(self) -> list[str]:
        """Configured symbols, in configuration order."""
        return list(self._walkers)

    @property
    def now_ms(self) -> int:
        """The simulated clock: the latest ``advance`` time."""
        return self._now_ms

    def config(self, symbol: str) -> SymbolConfig:
        """The configuration of ``symbol``."""
        return self._walker(symbol).cfg

    def stats(self, symbol: str) -> SimStats:
        """Tick and jump counts so far for ``symbol``."""
        return self._walker(symbol).stats

    def last_tick(self, symbol: str) -> Tick | None:
        """The latest tick of ``symbol`` (None before its first tick)."""
        return self._walker(symbol).last

    def _walker(self, symbol: str) -> _Walker:
        try:
            return self._walkers[symbol]
        except KeyError:
            raise DomainError(f"unknown symbol {symbol}", code="NOT_FOUND") from None

    def advance(self, now_ms: int) -> list[Tick]:
        """Every tick with ``ts <= now_ms`` not returned before, ordered by time.

        Ticks at the same millisecond keep configuration order, so the output is fully
        determined by the seed and the clock. The clock never goes back.
        """
        if now_ms <= self._now_ms:
            return []
        self._now_ms = now_ms
        out: list[tuple[int, int, Tick]] = []
        for idx, w in enumerate(self._walkers.values()):
            while True:
                ts = self.start_ms + math.floor(w.next_s * 1000.0)
                if ts > now_ms:
                    break
                out.append((ts, idx, self._step(w, ts)))
        out.sort(key=lambda x: (x[0], x[1]))
        return [t for _, _, t in out]

    def _step(self, w: _Walker, ts: int) -> Tick:
        """Produce the tick at ``w.next_s`` and draw the next arrival."""
        cfg, rng = w.cfg, w.rng
        dt = (w.next_s - w.last_s) / _YEAR_S
        sigma = w.sigma
        w.log_mid += (cfg.drift - 0.5 * sigma * sigma) * dt + sigma * math.sqrt(dt) * rng.gauss()
        if cfg.jump_probability and rng.random() < cfg.jump_probability:
            w.log_mid += cfg.jump_size if rng.random() < 0.5 else -cfg.jump_size
            w.stats.jumps += 1
        size = max(1, round(rng.expovariate(1.0 / cfg.mean_size)))
        w.last_s = w.next_s
        w.next_s += rng.expovariate(cfg.ticks_per_second)

        step = cfg.tick_size
        mid = math.exp(w.log_mid)
        half = mid * cfg.spread_bps / 20_000.0
        price = max(step, round(mid / step) * step)
        bid = max(step, math.floor((mid - half) / step) * step)
        ask = max(bid + step, math.ceil((mid + half) / step) * step)
        tick = Tick(cfg.symbol, price, size, ts, SOURCE, bid=bid, ask=ask)
        w.stats.ticks += 1
        w.last = tick
        return tick
