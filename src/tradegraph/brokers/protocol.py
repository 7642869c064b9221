"""The one interface TradeGraph uses to talk to external brokers (Deriv, Zerodha Kite, BingX).

Brokers are external sources of truth: the rest of the platform never sees their wire
formats, only these typed results (``Decimal`` for every amount, so nothing is rounded
through binary floats) and three domain errors with stable codes:

* ``BrokerUnavailable`` (``BROKER_UNAVAILABLE``): the broker did not answer usefully in
  time (timeouts, 5xx, rate limits after bounded retries). Safe to show "try again".
* ``BrokerAuthError`` (``BROKER_AUTH_FAILED``): the stored credentials no longer work; the
  user has to relink.
* ``BrokerRejected`` (``BROKER_REJECTED``): the broker understood and said no (bad input,
  insufficient funds, unknown order).

Messages never contain tokens, secrets or signatures: they end up in GraphQL payloads
and logs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from typing import Protocol, runtime_checkable

from tradegraph.errors import DomainError, Unavailable


class BrokerProvider(StrEnum):
    """Mirrors the GraphQL ``BrokerProvider`` enum."""

    DERIV = "DERIV"
    ZERODHA = "ZERODHA"
    BINGX = "BINGX"


class BrokerError(DomainError):
    """Base of broker failures; ``broker_code`` keeps the venue's own code for audit."""

    code = "BROKER_ERROR"

    def __init__(
        self,
        message: str,
        *,
        provider: BrokerProvider | None = None,
        broker_code: str | None = None,
        code: str | None = None,
        field: str | None = None,
    ) -> None:
        super().__init__(message, code=code, field=field)
        self.provider = provider
        self.broker_code = broker_code


class BrokerUnavailable(BrokerError, Unavailable):
    """The broker did not answer usefully within the deadline (after bounded retries)."""

    code = "BROKER_UNAVAILABLE"


class BrokerAuthError(BrokerError):
    """The broker refused the credentials: the link must be renewed by the user."""

    code = "BROKER_AUTH_FAILED"


class BrokerRejected(BrokerError):
    """The broker understood the request and refused it (validation, funds, state)."""

    code = "BROKER_REJECTED"


class OrderSide(StrEnum):
    BUY = "BUY"
    SELL = "SELL"


class OrderType(StrEnum):
    MARKET = "MARKET"
    LIMIT = "LIMIT"
    STOP_LIMIT = "STOP_LIMIT"
    STOP_MARKET = "STOP_MARKET"


class OrderStatus(StrEnum):
    """Same values as the GraphQL ``OrderStatus``; ``venue_status`` keeps the raw one."""

    NEW = "NEW"
    PARTIALLY_FILLED = "PARTIALLY_FILLED"
    FILLED = "FILLED"
    CANCELED = "CANCELED"
    REJECTED = "REJECTED"
    EXPIRED = "EXPIRED"


class PositionSide(StrEnum):
    LONG = "LONG"
    SHORT = "SHORT"


class PositionKind(StrEnum):
    """What a portfolio line is: brokers mix settled holdings, open positions, contracts."""

    HOLDING = "HOLDING"
    POSITION = "POSITION"
    CONTRACT = "CONTRACT"


class ContractDirection(StrEnum):
    """Deriv Rise/Fall: RISE is contract type CALL, FALL is PUT."""

    RISE = "RISE"
    FALL = "FALL"


class ContractStatus(StrEnum):
    OPEN = "OPEN"
    WON = "WON"
    LOST = "LOST"
    SOLD = "SOLD"


@dataclass(frozen=True, slots=True)
class Balance:
    """Cash in one asset: ``total = available + locked``."""

    asset: str
    total: Decimal
    available: Decimal
    locked: Decimal


@dataclass(frozen=True, slots=True)
class Position:
    """One portfolio line. ``quantity`` is always positive; ``side`` gives the direction."""

    symbol: str
    side: PositionSide
    quantity: Decimal
    kind: PositionKind = PositionKind.POSITION
    average_price: Decimal | None = None
    mark_price: Decimal | None = None
    unrealized_pnl: Decimal | None = None
    currency: str | None = None
    exchange: str | None = None
    product: str | None = None
    position_id: str | None = None


@dataclass(frozen=True, slots=True)
class BrokerOrder:
    """An order as the broker reports it right now."""

    order_id: str
    symbol: str
    side: OrderSide
    order_type: OrderType
    status: OrderStatus
    quantity: Decimal
    filled_quantity: Decimal = Decimal(0)
    price: Decimal | None = None
    average_price: Decimal | None = None
    client_order_id: str | None = None
    created_at: datetime | None = None
    venue_status: str | None = None
    status_message: str | None = None


@dataclass(frozen=True, slots=True)
class Contract:
    """A Deriv option contract (Rise/Fall), bought at ``buy_price`` for a fixed ``payout``."""

    contract_id: str
    symbol: str
    direction: ContractDirection
    currency: str
    buy_price: Decimal
    payout: Decimal
    status: ContractStatus
    purchase_time: datetime | None = None
    expiry_time: datetime | None = None
    sell_price: Decimal | None = None
    profit: Decimal | None = None
    entry_spot: Decimal | None = None
    exit_spot: Decimal | None = None
    transaction_id: str | None = None
    balance_after: Decimal | None = None
    description: str | None = None


def _positive(value: Decimal, name: str) -> None:
    if not value.is_finite() or value <= 0:
        raise DomainError(f"{name} must be a positive number", field=name)


@dataclass(frozen=True, slots=True)
class OrderRequest:
    """A broker-neutral order. ``options`` carries venue specifics (Kite ``product``,
    BingX ``positionSide``, Deriv ``duration``/``duration_unit``), documented per adapter.
    """

    symbol: str
    side: OrderSide
    quantity: Decimal
    order_type: OrderType = OrderType.MARKET
    price: Decimal | None = None
    stop_price: Decimal | None = None
    client_order_id: str | None = None
    options: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.symbol:
            raise DomainError("symbol is required", field="symbol")
        _positive(self.quantity, "quantity")
        if self.order_type in (OrderType.LIMIT, OrderType.STOP_LIMIT):
            if self.price is None:
                raise DomainError(f"{self.order_type} orders need a price", field="price")
            _positive(self.price, "price")
        elif self.price is not None:
            raise DomainError(f"{self.order_type} orders take no price", field="price")
        if self.order_type in (OrderType.STOP_LIMIT, OrderType.STOP_MARKET):
            if self.stop_price is None:
                raise DomainError(f"{self.order_type} orders need a stopPrice", field="stopPrice")
            _positive(self.stop_price, "stopPrice")
        elif self.stop_price is not None:
            raise DomainError(f"{self.order_type} orders take no stopPrice", field="stopPrice")


@runtime_checkable
class Broker(Protocol):
    """What every linked broker account can do; services depend on this, not on adapters."""

    provider: BrokerProvider

    async def balances(self) -> list[Balance]:
        """Cash per asset."""
        ...

    async def positions(self) -> list[Position]:
        """The portfolio: holdings, open positions or open contracts."""
        ...

    async def place_order(self, order: OrderRequest) -> BrokerOrder:
        """Send an order; the result is the broker's view right after acceptance."""
        ...

    async def cancel_order(self, order_id: str, *, symbol: str | None = None) -> BrokerOrder:
        """Cancel an open order (``symbol`` is needed by venues that key orders by it)."""
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...


def to_decimal(value: object, *, provider: BrokerProvider, what: str) -> Decimal:
    """Parse a broker number exactly; a malformed reply is the broker's fault, not ours."""
    if isinstance(value, Decimal):
        result = value
    elif isinstance(value, bool) or value is None:
        raise BrokerUnavailable(f"{provider} sent a malformed {what}", provider=provider)
    elif isinstance(value, int):
        result = Decimal(value)
    elif isinstance(value, float):
        result = Decimal(repr(value))
    elif isinstance(value, str):
        try:
            result = Decimal(value.strip())
        except InvalidOperation:
            raise BrokerUnavailable(
                f"{provider} sent a malformed {what}", provider=provider
            ) from None
    else:
        raise BrokerUnavailable(f"{provider} sent a malformed {what}", provider=provider)
    if not result.is_finite():
        raise BrokerUnavailable(f"{provider} sent a malformed {what}", provider=provider)
    return result


def optional_decimal(value: object, *, provider: BrokerProvider, what: str) -> Decimal | None:
    """Like ``to_decimal`` but ``None``/empty string mean "not reported"."""
    if value is None or value == "":
        return None
    return to_decimal(value, provider=provider, what=what)


def decimal_str(value: Decimal) -> str:
    """Plain notation for the wire: ``Decimal('1E+2')`` must go out as ``100``."""
    text = format(value, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text or "0"
