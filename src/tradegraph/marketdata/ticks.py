"""The tick type every feed produces and every market-data consumer reads.

Representation choices (kept for speed on the hot path and exactness everywhere):

* ``price`` (and ``bid``/``ask``) are integers in *minor price units* of the symbol:
  the real price is ``price / 10**price_decimals``, where ``price_decimals`` belongs
  to the symbol (instrument config), not to the tick. Integers make candle
  aggregation exact and cheap and match the platform's integer money rule.
* ``size`` is an integer in minor quantity units of the symbol (``qty_decimals``);
  quote-only ticks carry ``size == 0``.
* ``ts`` is integer milliseconds since the Unix epoch, UTC. Integer ms are several
  times faster to bucket than aware ``datetime`` objects; use :func:`ms_to_datetime`
  and :func:`datetime_to_ms` at the edges.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from typing import Protocol, runtime_checkable

from tradegraph.errors import DomainError

__all__ = [
    "Feed",
    "Tick",
    "datetime_to_ms",
    "minor_to_price",
    "ms_to_datetime",
    "price_to_minor",
]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Tick:
    """One price observation (a trade, or a quote when ``size == 0``) for one symbol.

    ``bid``/``ask`` are optional because trade feeds (e.g. exchange trade streams) do
    not carry them, while quote feeds (FX, the simulator) do; simulated venues fill
    buys at ``ask`` and sells at ``bid`` when present.
    """

    symbol: str
    price: int
    size: int
    ts: int
    source: str
    bid: int | None = None
    ask: int | None = None


@runtime_checkable
class Feed(Protocol):
    """A source of ticks: start it, iterate it, stop it.

    Iteration ends after :meth:`stop`; adapters reconnect internally with backoff and
    never raise out of iteration for transient network errors.
    """

    name: str

    async def start(self) -> None:
        """Connect / subscribe; returns once ticks may flow."""
        ...

    async def stop(self) -> None:
        """Disconnect and make iteration finish; safe to call more than once."""
        ...

    def __aiter__(self) -> AsyncIterator[Tick]:
        """Ticks in arrival order (per symbol ``ts`` is usually, not always, monotonic)."""
        ...


def ms_to_datetime(ms: int) -> datetime:
    """Convert epoch milliseconds to an aware UTC datetime (exact to the millisecond)."""
    return _EPOCH + timedelta(milliseconds=ms)


def datetime_to_ms(dt: datetime) -> int:
    """Convert an aware datetime to epoch milliseconds (naive ones are refused: ambiguous)."""
    if dt.tzinfo is None or dt.utcoffset() is None:
        raise DomainError("datetime must be timezone-aware", code="INVALID_TIMESTAMP")
    delta = dt - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


def price_to_minor(value: Decimal | str | int, decimals: int, *, exact: bool = True) -> int:
    """Convert a decimal price to minor units of a symbol with ``decimals`` places.

    With ``exact`` (the default, for user input) a value off the grid is an error rather
    than silently rounded; feeds quoting more digits than the instrument pass
    ``exact=False`` to round half-even.
    """
    try:
        d = Decimal(value)
    except (InvalidOperation, ValueError, TypeError):
        raise DomainError(f"not a number: {value!r}", code="INVALID_PRICE") from None
    if not d.is_finite():
        raise DomainError(f"not a finite number: {value!r}", code="INVALID_PRICE")
    scaled = d.scaleb(decimals)
    integral = scaled.to_integral_value(rounding=ROUND_HALF_EVEN)
    if exact and integral != scaled:
        raise DomainError(
            f"{value} has more than {decimals} decimal places", code="INVALID_TICK_SIZE"
        )
    return int(integral)


def minor_to_price(minor: int, decimals: int) -> Decimal:
    """Convert minor units back to an exact ``Decimal`` (the API's wire representation)."""
    return Decimal(minor).scaleb(-decimals)
