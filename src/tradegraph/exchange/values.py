"""Value types of the exchange core (pure, no I/O): its enums and its two input types.

Re-exported by :mod:`.book` (the enums) and :mod:`.engine` (:class:`InstrumentSpec`,
:class:`OrderRequest`), which is where callers import them from.  They live apart on
purpose: :mod:`.book` and :mod:`.engine` may be compiled with mypyc (``make native``) and
this module never is, so what callers build and hold stays an ordinary Python object.
Compiled, these enums would make a plain ``str`` equal to a member (``"BUY"``) a
``TypeError`` where the interpreted engine accepts it or answers a ``DomainError``, and
the frozen dataclasses would become native classes that cannot be copied, pickled or
subclassed.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

__all__ = [
    "TEXT",
    "InstrumentSpec",
    "InstrumentStatus",
    "OrderRequest",
    "OrderStatus",
    "OrderType",
    "PostingReason",
    "STPMode",
    "Side",
    "TimeInForce",
]


class Side(StrEnum):
    BUY = "BUY"
    SELL = "SELL"


class OrderType(StrEnum):
    LIMIT = "LIMIT"
    MARKET = "MARKET"
    STOP_LIMIT = "STOP_LIMIT"
    STOP_MARKET = "STOP_MARKET"


class TimeInForce(StrEnum):
    GTC = "GTC"
    IOC = "IOC"
    FOK = "FOK"


class OrderStatus(StrEnum):
    NEW = "NEW"
    PARTIALLY_FILLED = "PARTIALLY_FILLED"
    FILLED = "FILLED"
    CANCELED = "CANCELED"
    REJECTED = "REJECTED"
    EXPIRED = "EXPIRED"


class STPMode(StrEnum):
    """Self-trade prevention (Binance's names); the taker's mode decides."""

    NONE = "NONE"
    EXPIRE_TAKER = "EXPIRE_TAKER"
    EXPIRE_MAKER = "EXPIRE_MAKER"
    EXPIRE_BOTH = "EXPIRE_BOTH"


class InstrumentStatus(StrEnum):
    TRADING = "TRADING"
    HALTED = "HALTED"


class PostingReason(StrEnum):
    DEPOSIT = "DEPOSIT"
    WITHDRAWAL = "WITHDRAWAL"
    CREDIT = "CREDIT"
    TRADE = "TRADE"
    FEE = "FEE"


@dataclass(frozen=True, slots=True)
class InstrumentSpec:
    """A tradable pair.  ``tick``/``lot``/``min_qty`` are in price/qty units,
    ``min_notional`` in quote minor units, fees in basis points (0..10,000)."""

    symbol: str
    base_asset: str
    quote_asset: str
    base_decimals: int
    quote_decimals: int
    price_decimals: int
    qty_decimals: int
    tick: int = 1
    lot: int = 1
    min_qty: int = 0
    min_notional: int = 0
    maker_fee_bps: int = 0
    taker_fee_bps: int = 0
    status: InstrumentStatus = InstrumentStatus.TRADING

    @property
    def quote_mult(self) -> int:
        """Quote minor units per (price unit x qty unit)."""
        mult: int = 10 ** (self.quote_decimals - self.price_decimals - self.qty_decimals)
        return mult

    @property
    def base_mult(self) -> int:
        """Base minor units per qty unit."""
        mult: int = 10 ** (self.base_decimals - self.qty_decimals)
        return mult


# Each member's text by a dict lookup: ``member.value`` goes through a Python-level
# descriptor (~120 ns; the lookup ~16 ns), and order paths read several per order.
TEXT: dict[StrEnum, str] = {
    member: member.value
    for enum in (Side, OrderType, TimeInForce, OrderStatus, STPMode)
    for member in enum
}


@dataclass(frozen=True, slots=True)
class OrderRequest:
    """A placement, shape-checked by the API layer (the engine checks again).

    ``quantity`` in qty units; ``price``/``stop_price`` in price units; ``quote_quantity``
    (MARKET/STOP_MARKET buys only) is a notional budget in quote minor units.  Equality of
    two requests is what makes a ``client_order_id`` retry idempotent.
    """

    account_id: int
    symbol: str
    side: Side
    type: OrderType
    quantity: int | None = None
    price: int | None = None
    stop_price: int | None = None
    quote_quantity: int | None = None
    time_in_force: TimeInForce = TimeInForce.GTC
    post_only: bool = False
    client_order_id: str | None = None
    stp: STPMode = STPMode.EXPIRE_TAKER
