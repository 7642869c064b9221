"""GraphQL for the spot exchange: instruments, books, accounts, orders, fills, streams.

Translation only: arguments become service calls, integer units become ``Decimal`` with
the instrument's or asset's decimals.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Iterable, Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import strawberry
from strawberry import relay

from tradegraph.errors import DomainError
from tradegraph.exchange import models as m
from tradegraph.exchange.book import OrderStatus as CoreOrderStatus
from tradegraph.exchange.book import OrderType as CoreOrderType
from tradegraph.exchange.book import Side as CoreSide
from tradegraph.exchange.book import STPMode
from tradegraph.exchange.book import TimeInForce as CoreTimeInForce
from tradegraph.exchange.service import MAX_BULK_ORDERS, InstrumentInfo, OrderInput
from tradegraph.exchange.values import TEXT
from tradegraph.graphql.context import Info
from tradegraph.graphql.errors import UserError, returns_payload
from tradegraph.graphql.ids import decode_id
from tradegraph.graphql.loaders import (
    account_loader,
    balances_loader,
    fills_loader,
    instrument_loader,
    stats_loader,
)
from tradegraph.graphql.marketdata import sim_stats_loader
from tradegraph.graphql.pagination import (
    Connection,
    build_connection,
    check_page_size,
    decode_cursor,
)
from tradegraph.graphql.streams import track
from tradegraph.money import from_minor
from tradegraph.pubsub import is_gap

Side = CoreSide
OrderType = CoreOrderType
TimeInForce = CoreTimeInForce
OrderStatus = CoreOrderStatus
SelfTradePrevention = STPMode
AccountKind = m.AccountKind
AccountStatus = m.AccountStatus
Venue = m.Venue
TransactionKind = m.TransactionKind
TransactionStatus = m.TransactionStatus
strawberry.enum(Side, description="Buy or sell.")
strawberry.enum(OrderType, description="How an order prices itself.")
strawberry.enum(TimeInForce, description="GTC rests; IOC fills what it can; FOK all or nothing.")
strawberry.enum(OrderStatus, description="Life-cycle state of an order.")
strawberry.enum(
    SelfTradePrevention,
    name="SelfTradePrevention",
    description="What happens when an order would trade with its own account's order.",
)
strawberry.enum(AccountKind, description="What an account is for.")
strawberry.enum(AccountStatus, description="Whether an account can trade.")
strawberry.enum(Venue, description="CLOB matches orders; SIM fills at feed prices.")
strawberry.enum(TransactionKind, description="Deposit, withdrawal, credit.")
strawberry.enum(TransactionStatus, description="Outcome of a transaction.")


def account_id_arg(value: strawberry.ID, field: str = "accountId") -> int:
    raw = decode_id(value, "Account", field=field)
    try:
        return int(raw)
    except ValueError:
        raise DomainError("not an account id", code="INVALID_ID", field=field) from None


def order_id_arg(value: strawberry.ID, field: str = "id") -> int:
    raw = decode_id(value, "Order", field=field)
    try:
        return int(raw)
    except ValueError:
        raise DomainError("not an order id", code="INVALID_ID", field=field) from None


def _ts(value: str | datetime) -> datetime:
    return value if isinstance(value, datetime) else datetime.fromisoformat(value)


# ---------------------------------------------------------------------------- types


@strawberry.type(description="Rolling 24-hour statistics of an instrument's trades.")
class Stats24h:
    open: Decimal | None = strawberry.field(description="First trade price in the window.")
    high: Decimal | None = strawberry.field(description="Highest trade price.")
    low: Decimal | None = strawberry.field(description="Lowest trade price.")
    last: Decimal | None = strawberry.field(description="Last trade price.")
    volume: Decimal = strawberry.field(description="Base quantity traded.")
    quote_volume: Decimal = strawberry.field(description="Quote notional traded.")
    change_percent: Decimal | None = strawberry.field(description="(last - open) / open x 100.")
    trades: int = strawberry.field(description="Number of trades.")


def stats_from(info: InstrumentInfo, raw: dict[str, Any] | None) -> Stats24h:
    if raw is None:
        return Stats24h(
            open=None,
            high=None,
            low=None,
            last=None,
            volume=Decimal(0),
            quote_volume=Decimal(0),
            change_percent=None,
            trades=0,
        )
    change = None
    if raw["open"]:
        change = (Decimal(raw["last"] - raw["open"]) * 100 / Decimal(raw["open"])).quantize(
            Decimal("0.01")
        )
    return Stats24h(
        open=info.price(raw["open"]),
        high=info.price(raw["high"]),
        low=info.price(raw["low"]),
        last=info.price(raw["last"]),
        volume=info.qty(raw["volume"]) or Decimal(0),
        quote_volume=info.quote(raw["quote_volume"]) or Decimal(0),
        change_percent=change,
        trades=raw["trades"],
    )


@strawberry.type(description="A tradable pair, e.g. BTC-USD.")
class Instrument:
    symbol: str = strawberry.field(description="Symbol, BASE-QUOTE.")
    base_asset: str = strawberry.field(description="Asset bought or sold.")
    quote_asset: str = strawberry.field(description="Asset prices are quoted in.")
    venue: Venue = strawberry.field(description="CLOB or SIM.")
    price_decimals: int = strawberry.field(description="Decimal places of prices.")
    quantity_decimals: int = strawberry.field(description="Decimal places of quantities.")
    tick_size: Decimal = strawberry.field(description="Prices must be multiples of this.")
    lot_size: Decimal = strawberry.field(description="Quantities must be multiples of this.")
    min_quantity: Decimal = strawberry.field(description="Smallest order quantity.")
    min_notional: Decimal = strawberry.field(description="Smallest price x quantity.")
    maker_fee_bps: int = strawberry.field(description="Maker fee, basis points.")
    taker_fee_bps: int = strawberry.field(description="Taker fee, basis points.")
    status: str = strawberry.field(description="TRADING or HALTED.")
    last_price: Decimal | None = strawberry.field(description="Last trade or mark price.")
    _info: strawberry.Private[InstrumentInfo]

    @classmethod
    def from_info(cls, info: InstrumentInfo) -> Instrument:
        r = info.row
        return cls(
            symbol=r.symbol,
            base_asset=r.base_asset,
            quote_asset=r.quote_asset,
            venue=r.venue,
            price_decimals=r.price_decimals,
            quantity_decimals=r.qty_decimals,
            tick_size=from_minor(r.tick, r.price_decimals),
            lot_size=from_minor(r.lot, r.qty_decimals),
            min_quantity=from_minor(r.min_qty, r.qty_decimals),
            min_notional=from_minor(r.min_notional, info.quote_decimals),
            maker_fee_bps=r.maker_fee_bps,
            taker_fee_bps=r.taker_fee_bps,
            status=r.status.value,
            last_price=info.price(r.last_price),
            _info=info,
        )

    @strawberry.field(
        description="Rolling 24-hour open, high, low, last, volume and change (SIM "
        "instruments: from their feed's M1 candles; no trades there, so quoteVolume is 0)."
    )
    async def stats24h(self, info: Info) -> Stats24h:
        if self.venue is Venue.SIM:
            return stats_from(self._info, await sim_stats_loader(info).load(self.symbol))
        return stats_from(self._info, await stats_loader(info).load(self.symbol))


@strawberry.type(description="One aggregated price level of a book.")
class BookLevel:
    price: Decimal = strawberry.field(description="Level price.")
    quantity: Decimal = strawberry.field(description="Total resting quantity (0 = removed).")


def _levels(info: InstrumentInfo, levels: Iterable[Any]) -> list[BookLevel]:
    return [
        BookLevel(price=info.price(p) or Decimal(0), quantity=info.qty(q) or Decimal(0))
        for p, q in levels
    ]


@strawberry.type(description="Aggregated order book, best levels first.")
class OrderBook:
    symbol: str = strawberry.field(description="Instrument symbol.")
    sequence: int = strawberry.field(description="book:SYMBOL sequence this snapshot is at.")
    bids: list[BookLevel] = strawberry.field(description="Buy levels, highest first.")
    asks: list[BookLevel] = strawberry.field(description="Sell levels, lowest first.")
    best_bid: Decimal | None = strawberry.field(description="Highest bid.")
    best_ask: Decimal | None = strawberry.field(description="Lowest ask.")
    last_price: Decimal | None = strawberry.field(description="Last trade price.")


def book_from(info: InstrumentInfo, snap: dict[str, Any]) -> OrderBook:
    return OrderBook(
        symbol=info.symbol,
        sequence=snap["seq"],
        bids=_levels(info, snap["bids"]),
        asks=_levels(info, snap["asks"]),
        best_bid=info.price(snap.get("best_bid")),
        best_ask=info.price(snap.get("best_ask")),
        last_price=info.price(snap.get("last")),
    )


@strawberry.type(description="A public trade on the tape.")
class Trade:
    id: strawberry.ID = strawberry.field(description="Trade id (increasing).")
    symbol: str = strawberry.field(description="Instrument.")
    price: Decimal = strawberry.field(description="Execution price.")
    quantity: Decimal = strawberry.field(description="Base quantity.")
    taker_side: Side = strawberry.field(description="Side of the order that took liquidity.")
    sequence: int = strawberry.field(description="trades:SYMBOL sequence number.")
    created_at: datetime = strawberry.field(description="Execution time (UTC).")

    @classmethod
    def from_row(cls, info: InstrumentInfo, t: m.Trade) -> Trade:
        return cls(
            id=strawberry.ID(str(t.id)),
            symbol=t.symbol,
            price=info.price(t.price) or Decimal(0),
            quantity=info.qty(t.qty) or Decimal(0),
            taker_side=t.taker_side,
            sequence=t.seq,
            created_at=t.created_at,
        )

    @classmethod
    def from_event(cls, info: InstrumentInfo, d: dict[str, Any]) -> Trade:
        return cls(
            id=strawberry.ID(str(d["id"])),
            symbol=d["symbol"],
            price=info.price(d["price"]) or Decimal(0),
            quantity=info.qty(d["qty"]) or Decimal(0),
            taker_side=CoreSide(d["taker_side"]),
            sequence=d["seq"],
            created_at=_ts(d["ts"]),
        )


@strawberry.type(description="Your side of a trade.")
class Fill:
    trade_id: strawberry.ID = strawberry.field(description="The trade.")
    order_id: strawberry.ID = strawberry.field(description="Your order (global id).")
    account_id: strawberry.ID = strawberry.field(description="Your account (global id).")
    symbol: str = strawberry.field(description="Instrument.")
    side: Side = strawberry.field(description="Your side.")
    price: Decimal = strawberry.field(description="Execution price.")
    quantity: Decimal = strawberry.field(description="Base quantity.")
    quote_quantity: Decimal = strawberry.field(description="Price x quantity in the quote asset.")
    fee: Decimal = strawberry.field(description="Fee charged to you, in the quote asset.")
    liquidity: str = strawberry.field(description="MAKER or TAKER.")
    created_at: datetime = strawberry.field(description="Execution time (UTC).")

    @classmethod
    def from_trade(cls, info: InstrumentInfo, t: m.Trade, account_id: int, order_id: int) -> Fill:
        taker = t.taker_order_id == order_id and t.taker_account_id == account_id
        side = (
            t.taker_side
            if taker
            else (CoreSide.SELL if t.taker_side is CoreSide.BUY else CoreSide.BUY)
        )
        return cls(
            trade_id=strawberry.ID(str(t.id)),
            order_id=strawberry.ID(str(relay.GlobalID("Order", str(order_id)))),
            account_id=strawberry.ID(str(relay.GlobalID("Account", str(account_id)))),
            symbol=t.symbol,
            side=side,
            price=info.price(t.price) or Decimal(0),
            quantity=info.qty(t.qty) or Decimal(0),
            quote_quantity=info.quote(t.notional) or Decimal(0),
            fee=info.quote(t.taker_fee if taker else t.maker_fee) or Decimal(0),
            liquidity="TAKER" if taker else "MAKER",
            created_at=t.created_at,
        )

    @classmethod
    def from_event(cls, info: InstrumentInfo, d: dict[str, Any]) -> Fill:
        return cls(
            trade_id=strawberry.ID(str(d["id"])),
            order_id=strawberry.ID(str(relay.GlobalID("Order", str(d["order_id"])))),
            account_id=strawberry.ID(str(relay.GlobalID("Account", str(d["account_id"])))),
            symbol=d["symbol"],
            side=CoreSide(d["side"]),
            price=info.price(d["price"]) or Decimal(0),
            quantity=info.qty(d["qty"]) or Decimal(0),
            quote_quantity=info.quote(d["notional"]) or Decimal(0),
            fee=info.quote(d["fee"]) or Decimal(0),
            liquidity=d["liquidity"],
            created_at=_ts(d["ts"]),
        )


@strawberry.type(description="An amount of one asset held by an account.")
class Balance:
    asset: str = strawberry.field(description="Asset code.")
    total: Decimal = strawberry.field(description="Everything held.")
    locked: Decimal = strawberry.field(description="Reserved by open orders.")
    available: Decimal = strawberry.field(description="total - locked: usable now.")


@strawberry.type(description="A trading account (SPOT, PAPER, ...) with its balances.")
class Account(relay.Node):
    id: relay.NodeID[str]
    kind: AccountKind = strawberry.field(description="What the account is for.")
    name: str = strawberry.field(description="Label.")
    status: AccountStatus = strawberry.field(description="ACTIVE, FROZEN or CLOSED.")
    created_at: datetime = strawberry.field(description="Opened at (UTC).")
    _raw_id: strawberry.Private[int]

    @classmethod
    def from_row(cls, a: m.Account) -> Account:
        return cls(
            id=str(a.id),
            kind=a.kind,
            name=a.name,
            status=a.status,
            created_at=a.created_at,
            _raw_id=a.id,
        )

    @strawberry.field(description="Balances per asset.")
    async def balances(self, info: Info) -> list[Balance]:
        rows = await balances_loader(info).load(self._raw_id)
        out = []
        for b in rows:
            decimals = await info.context.services.exchange.asset_decimals(b.asset)
            out.append(
                Balance(
                    asset=b.asset,
                    total=from_minor(b.total, decimals),
                    locked=from_minor(b.locked, decimals),
                    available=from_minor(b.total - b.locked, decimals),
                )
            )
        return out

    @classmethod
    async def resolve_nodes(  # type: ignore[override]
        cls, *, info: Info, node_ids: Iterable[str], required: bool = False
    ) -> list[Account | None]:
        ids = list(node_ids)
        if info.context.principal is None:
            return [None] * len(ids)
        numeric = [int(i) for i in ids if i.isdigit()]
        found = await info.context.services.exchange.accounts_by_id(info.context.principal, numeric)
        return [
            Account.from_row(found[int(i)]) if i.isdigit() and int(i) in found else None
            for i in ids
        ]


@strawberry.type(description="An order and its state.")
class Order(relay.Node):
    id: relay.NodeID[str]
    client_order_id: str | None = strawberry.field(description="Your id for the order.")
    symbol: str = strawberry.field(description="Instrument.")
    side: Side = strawberry.field(description="BUY or SELL.")
    type: OrderType = strawberry.field(description="LIMIT, MARKET, STOP_LIMIT, STOP_MARKET.")
    time_in_force: TimeInForce = strawberry.field(description="GTC, IOC or FOK.")
    status: OrderStatus = strawberry.field(description="Current state.")
    price: Decimal | None = strawberry.field(description="Limit price.")
    stop_price: Decimal | None = strawberry.field(description="Trigger price of stop orders.")
    quantity: Decimal | None = strawberry.field(description="Ordered base quantity.")
    quote_quantity: Decimal | None = strawberry.field(description="Quote budget (market buys).")
    filled_quantity: Decimal = strawberry.field(description="Base quantity filled so far.")
    remaining_quantity: Decimal = strawberry.field(description="Base quantity still open.")
    quote_filled: Decimal = strawberry.field(description="Quote notional filled so far.")
    average_price: Decimal | None = strawberry.field(description="Volume-weighted fill price.")
    fee: Decimal = strawberry.field(description="Fees paid so far (quote asset).")
    post_only: bool = strawberry.field(description="Rejected if it would take liquidity.")
    reason: str | None = strawberry.field(description="Why the order ended, if it did.")
    created_at: datetime | None = strawberry.field(description="Placed at (UTC).")
    updated_at: datetime | None = strawberry.field(description="Last change (UTC).")
    _raw_id: strawberry.Private[int]
    _account_id: strawberry.Private[int]

    @classmethod
    def build(
        cls,
        info: InstrumentInfo,
        d: dict[str, Any],
        created: datetime | None,
        updated: datetime | None,
    ) -> Order:
        filled = d["filled_qty"]
        avg = None
        if filled:
            avg = (info.quote(d["quote_filled"]) or Decimal(0)) / (info.qty(filled) or 1)
            avg = avg.quantize(Decimal(1).scaleb(-info.price_decimals))
        return cls(
            id=str(d["id"]),
            client_order_id=d.get("client_order_id"),
            symbol=d["symbol"],
            side=CoreSide(d["side"]),
            type=CoreOrderType(d["type"]),
            time_in_force=CoreTimeInForce(d["time_in_force"]),
            status=CoreOrderStatus(d["status"]),
            price=info.price(d.get("price")),
            stop_price=info.price(d.get("stop_price")),
            quantity=info.qty(d.get("quantity")),
            quote_quantity=info.quote(d.get("quote_quantity")),
            filled_quantity=info.qty(filled) or Decimal(0),
            remaining_quantity=info.qty(d["remaining_qty"]) or Decimal(0),
            quote_filled=info.quote(d["quote_filled"]) or Decimal(0),
            average_price=avg,
            fee=info.quote(d["fee_paid"]) or Decimal(0),
            post_only=bool(d.get("post_only")),
            reason=d.get("reason"),
            created_at=created,
            updated_at=updated,
            _raw_id=int(d["id"]),
            _account_id=int(d["account_id"]),
        )

    @classmethod
    def from_row(cls, info: InstrumentInfo, o: m.Order) -> Order:
        d = {
            "id": o.id,
            "account_id": o.account_id,
            "symbol": o.symbol,
            "side": o.side.value,
            "type": o.type.value,
            "time_in_force": o.time_in_force.value,
            "status": o.status.value,
            "price": o.price,
            "stop_price": o.stop_price,
            "quantity": o.quantity,
            "quote_quantity": o.quote_quantity,
            "post_only": o.post_only,
            "client_order_id": o.client_order_id,
            "filled_qty": o.filled_qty,
            "remaining_qty": o.remaining_qty,
            "quote_filled": o.quote_filled,
            "fee_paid": o.fee_paid,
            "reason": o.reason,
        }
        return cls.build(info, d, o.created_at, o.updated_at)

    @strawberry.field(description="The account the order belongs to.")
    async def account(self, info: Info) -> Account | None:
        row = await account_loader(info).load(self._account_id)
        return Account.from_row(row) if row else None

    @strawberry.field(description="The instrument traded.")
    async def instrument(self, info: Info) -> Instrument | None:
        ins = await instrument_loader(info).load(self.symbol)
        return Instrument.from_info(ins) if ins else None

    @strawberry.field(description="Executions of this order, oldest first.")
    async def fills(self, info: Info) -> list[Fill]:
        trades = await fills_loader(info).load(self._raw_id)
        ins = await instrument_loader(info).load(self.symbol)
        if ins is None:
            return []
        return [Fill.from_trade(ins, t, self._account_id, self._raw_id) for t in trades]

    @classmethod
    async def resolve_nodes(  # type: ignore[override]
        cls, *, info: Info, node_ids: Iterable[str], required: bool = False
    ) -> list[Order | None]:
        ids = list(node_ids)
        principal = info.context.principal
        if principal is None:
            return [None] * len(ids)
        numeric = [int(i) for i in ids if i.isdigit()]
        found = await info.context.services.exchange.orders_by_id(principal, numeric)
        out: list[Order | None] = []
        for i in ids:
            row = found.get(int(i)) if i.isdigit() else None
            if row is None:
                out.append(None)
                continue
            ins = await info.context.services.exchange.instrument(row.symbol)
            out.append(Order.from_row(ins, row))
        return out


@strawberry.type(description="A deposit, withdrawal or credit.")
class Transaction:
    id: strawberry.ID = strawberry.field(description="Transaction id.")
    account_id: strawberry.ID = strawberry.field(description="Account (global id).")
    kind: TransactionKind = strawberry.field(description="DEPOSIT, WITHDRAWAL or CREDIT.")
    status: TransactionStatus = strawberry.field(description="Outcome.")
    asset: str = strawberry.field(description="Asset.")
    amount: Decimal = strawberry.field(description="Amount.")
    idempotency_key: str | None = strawberry.field(description="Your idempotency key.")
    created_at: datetime = strawberry.field(description="When (UTC).")


async def transaction_from(info: Info, d: dict[str, Any]) -> Transaction:
    decimals = await info.context.services.exchange.asset_decimals(d["asset"])
    return Transaction(
        id=strawberry.ID(d["id"]),
        account_id=strawberry.ID(str(relay.GlobalID("Account", str(d["account_id"])))),
        kind=m.TransactionKind(d["kind"]),
        status=m.TransactionStatus(d["status"]),
        asset=d["asset"],
        amount=from_minor(int(d["amount"]), decimals),
        idempotency_key=d.get("idempotency_key"),
        created_at=_ts(d["created_at"]),
    )


def _tx_dict(t: m.Transaction) -> dict[str, Any]:
    return {
        "id": t.id,
        "account_id": t.account_id,
        "kind": t.kind.value,
        "status": t.status.value,
        "asset": t.asset,
        "amount": t.amount,
        "idempotency_key": t.idempotency_key,
        "created_at": t.created_at,
    }


# --------------------------------------------------------------------------- inputs


@strawberry.input(description="Open a trading account.")
class OpenAccountInput:
    kind: AccountKind = strawberry.field(description="SPOT or PAPER.")
    name: str | None = strawberry.field(default=None, description="Label.")


@strawberry.input(description="Move money into an account.")
class DepositInput:
    account_id: strawberry.ID = strawberry.field(description="Account (global id).")
    asset: str = strawberry.field(description="Asset code, e.g. USD.")
    amount: Decimal = strawberry.field(description="Positive amount, at most the asset's decimals.")
    idempotency_key: str | None = strawberry.field(
        default=None, description="Retry-safe key: the same key returns the same result."
    )


@strawberry.input(description="Take money out of an account (available balance only).")
class WithdrawInput:
    account_id: strawberry.ID = strawberry.field(description="Account (global id).")
    asset: str = strawberry.field(description="Asset code.")
    amount: Decimal = strawberry.field(description="Positive amount.")
    idempotency_key: str | None = strawberry.field(default=None, description="Retry-safe key.")


@strawberry.input(description="A new order.")
class PlaceOrderInput:
    account_id: strawberry.ID = strawberry.field(description="Account (global id).")
    symbol: str = strawberry.field(description="Instrument, e.g. BTC-USD.")
    side: Side = strawberry.field(description="BUY or SELL.")
    type: OrderType = strawberry.field(description="LIMIT, MARKET, STOP_LIMIT, STOP_MARKET.")
    quantity: Decimal | None = strawberry.field(default=None, description="Base quantity.")
    quote_quantity: Decimal | None = strawberry.field(
        default=None, description="Quote budget instead of quantity (MARKET buys)."
    )
    price: Decimal | None = strawberry.field(default=None, description="Limit price.")
    stop_price: Decimal | None = strawberry.field(default=None, description="Stop trigger.")
    time_in_force: TimeInForce = strawberry.field(
        default=CoreTimeInForce.GTC, description="GTC, IOC or FOK."
    )
    post_only: bool = strawberry.field(default=False, description="Only add liquidity.")
    client_order_id: str | None = strawberry.field(
        default=None, description="Your id, up to 36 of [A-Za-z0-9._:/-]; makes retries safe."
    )
    self_trade_prevention: SelfTradePrevention = strawberry.field(
        default=STPMode.EXPIRE_TAKER, description="Self-trade prevention mode."
    )

    def to_input(self) -> OrderInput:
        return OrderInput(
            account_id=account_id_arg(self.account_id),
            symbol=self.symbol,
            side=TEXT[self.side],
            type=TEXT[self.type],
            quantity=self.quantity,
            price=self.price,
            stop_price=self.stop_price,
            quote_quantity=self.quote_quantity,
            time_in_force=TEXT[self.time_in_force],
            post_only=self.post_only,
            client_order_id=self.client_order_id,
            self_trade_prevention=TEXT[self.self_trade_prevention],
        )


@strawberry.input(description="Cancel one order by id or by clientOrderId.")
class CancelOrderInput:
    id: strawberry.ID | None = strawberry.field(default=None, description="Order (global id).")
    client_order_id: str | None = strawberry.field(default=None, description="Your order id.")
    account_id: strawberry.ID | None = strawberry.field(
        default=None, description="Account, to disambiguate a clientOrderId."
    )


@strawberry.input(description="Cancel all open orders of an account.")
class CancelAllOrdersInput:
    account_id: strawberry.ID = strawberry.field(description="Account (global id).")
    symbol: str | None = strawberry.field(default=None, description="Only this instrument.")


# ------------------------------------------------------------------------- payloads


@strawberry.type(description="Result of openAccount.")
class AccountPayload:
    account: Account | None = strawberry.field(default=None, description="The new account.")
    errors: list[UserError] = strawberry.field(default_factory=list, description="Failures.")


@strawberry.type(description="Result of deposit.")
class DepositPayload:
    transaction: Transaction | None = strawberry.field(default=None, description="The deposit.")
    balance: Balance | None = strawberry.field(default=None, description="New balance.")
    errors: list[UserError] = strawberry.field(default_factory=list, description="Failures.")


@strawberry.type(description="Result of withdraw.")
class WithdrawPayload:
    transaction: Transaction | None = strawberry.field(default=None, description="The withdrawal.")
    balance: Balance | None = strawberry.field(default=None, description="New balance.")
    errors: list[UserError] = strawberry.field(default_factory=list, description="Failures.")


class _Placed:
    """An accepted order's engine result, turned into ``Order`` and ``Fill`` objects only
    when a selection reads them: a bot placing 100 orders that selects only ``errors``
    would otherwise pay for a dozen ``Decimal`` conversions per order it never sees."""

    __slots__ = ("_fills", "_order", "at", "instrument", "result")

    def __init__(self, instrument: InstrumentInfo, result: dict[str, Any], at: datetime) -> None:
        self.instrument = instrument
        self.result = result
        self.at = at
        self._order: Order | None = None
        self._fills: list[Fill] | None = None

    def order(self) -> Order:
        if self._order is None:
            self._order = Order.build(self.instrument, self.result["order"], None, self.at)
        return self._order

    def fills(self) -> list[Fill]:
        if self._fills is None:
            order = self.result["order"]
            self._fills = [
                Fill.from_event(
                    self.instrument,
                    {
                        **t,
                        "order_id": order["id"],
                        "account_id": order["account_id"],
                        "side": order["side"],
                        "fee": t["taker_fee"],
                        "liquidity": "TAKER",
                    },
                )
                for t in self.result.get("trades", [])
            ]
        return self._fills


@strawberry.type(description="Result of placeOrder.")
class PlaceOrderPayload:
    @strawberry.field(description="The order after matching.")
    def order(self) -> Order | None:
        return None if self.placed is None else self.placed.order()

    @strawberry.field(description="Fills as taker.")
    def fills(self) -> list[Fill]:
        return [] if self.placed is None else self.placed.fills()

    errors: list[UserError] = strawberry.field(default_factory=list, description="Failures.")
    placed: strawberry.Private[_Placed | None] = None


@strawberry.type(description="Result of placeOrders: one entry per input, in order.")
class PlaceOrdersPayload:
    results: list[PlaceOrderPayload] = strawberry.field(
        default_factory=list, description="Each order's own result."
    )
    errors: list[UserError] = strawberry.field(default_factory=list, description="Failures.")


@strawberry.type(description="Result of cancelOrder.")
class CancelOrderPayload:
    order: Order | None = strawberry.field(default=None, description="The canceled order.")
    errors: list[UserError] = strawberry.field(default_factory=list, description="Failures.")


@strawberry.type(description="Result of cancelAllOrders.")
class CancelAllOrdersPayload:
    orders: list[Order] = strawberry.field(default_factory=list, description="Canceled orders.")
    errors: list[UserError] = strawberry.field(default_factory=list, description="Failures.")


def _place_payload(
    instruments: Mapping[str, InstrumentInfo], result: dict[str, Any], at: datetime
) -> PlaceOrderPayload:
    error = result.get("error")
    if error:
        return PlaceOrderPayload(
            errors=[
                UserError(code=error["code"], field=error.get("field"), message=error["message"])
            ]
        )
    return PlaceOrderPayload(placed=_Placed(instruments[result["order"]["symbol"]], result, at))


async def _instruments_of(
    info: Info, results: Iterable[dict[str, Any]]
) -> dict[str, InstrumentInfo]:
    """The instrument of each accepted order in ``results``, one lookup per symbol."""
    service = info.context.services.exchange
    found: dict[str, InstrumentInfo] = {}
    for result in results:
        order = result.get("order")
        if order is not None and order["symbol"] not in found:
            found[order["symbol"]] = await service.instrument(order["symbol"])
    return found


async def _money_move(
    info: Info, kind: str, input: DepositInput | WithdrawInput
) -> tuple[Transaction, Balance]:
    """Shared by deposit and withdraw: same arguments, same result shape."""
    principal = info.context.require_principal()
    service = info.context.services.exchange
    move = service.deposit if kind == "deposit" else service.withdraw
    result = await move(
        principal,
        account_id_arg(input.account_id),
        input.asset,
        input.amount,
        input.idempotency_key,
    )
    decimals = await service.asset_decimals(input.asset)
    return (
        await transaction_from(info, result["transaction"]),
        _balance(decimals, input.asset, result["balance"]),
    )


def _balance(decimals: int, asset: str, b: dict[str, Any]) -> Balance:
    return Balance(
        asset=asset,
        total=from_minor(b["total"], decimals),
        locked=from_minor(b["locked"], decimals),
        available=from_minor(b["total"] - b["locked"], decimals),
    )


# -------------------------------------------------------------------------- queries


@strawberry.type
class ExchangeQuery:
    @strawberry.field(description="Every instrument with its rules and last price.")
    async def instruments(self, info: Info) -> list[Instrument]:
        return [Instrument.from_info(i) for i in await info.context.services.exchange.instruments()]

    @strawberry.field(description="One instrument by symbol, or null.")
    async def instrument(self, info: Info, symbol: str) -> Instrument | None:
        ins = await instrument_loader(info).load(symbol)
        return Instrument.from_info(ins) if ins else None

    @strawberry.field(description="Aggregated book levels of an instrument.")
    async def order_book(self, info: Info, symbol: str, depth: int = 20) -> OrderBook:
        service = info.context.services.exchange
        ins = await service.instrument(symbol)
        return book_from(ins, await service.order_book(symbol, depth))

    @strawberry.field(description="The latest public trades, newest first.")
    async def recent_trades(self, info: Info, symbol: str, limit: int = 50) -> list[Trade]:
        check_page_size(limit, info.context.settings.max_page_size)
        service = info.context.services.exchange
        ins = await service.instrument(symbol)
        return [Trade.from_row(ins, t) for t in await service.recent_trades(symbol, limit)]

    @strawberry.field(description="Your accounts.")
    async def accounts(self, info: Info) -> list[Account]:
        principal = info.context.require_principal()
        return [
            Account.from_row(a) for a in await info.context.services.exchange.accounts(principal)
        ]

    @strawberry.field(description="One of your accounts, or null.")
    async def account(self, info: Info, id: strawberry.ID) -> Account | None:
        principal = info.context.require_principal()
        row = await info.context.services.exchange.account(principal, account_id_arg(id, "id"))
        return Account.from_row(row) if row else None

    @strawberry.field(description="Your orders, newest first.")
    async def orders(
        self,
        info: Info,
        account_id: strawberry.ID | None = None,
        symbol: str | None = None,
        status: list[OrderStatus] | None = None,
        first: int = 50,
        after: str | None = None,
    ) -> Connection[Order]:
        principal = info.context.require_principal()
        check_page_size(first, info.context.settings.max_page_size)
        key = decode_cursor(after, size=1)
        service = info.context.services.exchange
        rows = await service.orders(
            principal,
            account_id=account_id_arg(account_id) if account_id else None,
            symbol=symbol,
            statuses=status,
            limit=first + 1,
            before_id=int(key[0]) if key else None,
        )
        loader = instrument_loader(info)
        infos = {s: await loader.load(s) for s in {r.symbol for r in rows}}
        return build_connection(
            rows,
            first,
            lambda r: (r.id,),
            lambda r: Order.from_row(infos[r.symbol], r),  # type: ignore[arg-type]
        )

    @strawberry.field(description="One of your orders by id or clientOrderId.")
    async def order(
        self, info: Info, id: strawberry.ID | None = None, client_order_id: str | None = None
    ) -> Order | None:
        principal = info.context.require_principal()
        service = info.context.services.exchange
        row = await service.find_order(
            principal, order_id=order_id_arg(id) if id else None, client_order_id=client_order_id
        )
        if row is None:
            return None
        return Order.from_row(await service.instrument(row.symbol), row)

    @strawberry.field(description="Your fills, newest first.")
    async def fills(
        self,
        info: Info,
        account_id: strawberry.ID | None = None,
        symbol: str | None = None,
        first: int = 50,
        after: str | None = None,
    ) -> Connection[Fill]:
        principal = info.context.require_principal()
        check_page_size(first, info.context.settings.max_page_size)
        key = decode_cursor(after, size=1)
        service = info.context.services.exchange
        pairs = await service.fills(
            principal,
            account_id=account_id_arg(account_id) if account_id else None,
            symbol=symbol,
            limit=first + 1,
            before_id=int(key[0]) if key else None,
        )
        loader = instrument_loader(info)
        infos = {s: await loader.load(s) for s in {t.symbol for t, _ in pairs}}

        def node(pair: tuple[m.Trade, int]) -> Fill:
            t, acct = pair
            order_id = t.taker_order_id if t.taker_account_id == acct else t.maker_order_id
            return Fill.from_trade(infos[t.symbol], t, acct, order_id)  # type: ignore[arg-type]

        return build_connection(pairs, first, lambda p: (p[0].id,), node)

    @strawberry.field(description="Your deposits, withdrawals and credits, newest first.")
    async def transactions(
        self,
        info: Info,
        account_id: strawberry.ID | None = None,
        first: int = 50,
        after: str | None = None,
    ) -> Connection[Transaction]:
        principal = info.context.require_principal()
        check_page_size(first, info.context.settings.max_page_size)
        key = decode_cursor(after, size=2)
        rows = await info.context.services.exchange.transactions(
            principal,
            account_id=account_id_arg(account_id) if account_id else None,
            limit=first + 1,
            after=(str(key[0]), str(key[1])) if key else None,
        )
        nodes = {r.id: await transaction_from(info, _tx_dict(r)) for r in rows}
        return build_connection(
            rows, first, lambda r: (r.created_at.isoformat(), r.id), lambda r: nodes[r.id]
        )


# ------------------------------------------------------------------------ mutations


@strawberry.type
class ExchangeMutation:
    @strawberry.mutation(description="Open a SPOT or PAPER account.")
    @returns_payload(AccountPayload)
    async def open_account(self, info: Info, input: OpenAccountInput) -> AccountPayload:
        principal = info.context.require_principal()
        row = await info.context.services.exchange.open_account(principal, input.kind, input.name)
        return AccountPayload(account=Account.from_row(row))

    @strawberry.mutation(description="Deposit (PAPER accounts; SPOT only with the demo faucet).")
    @returns_payload(DepositPayload)
    async def deposit(self, info: Info, input: DepositInput) -> DepositPayload:
        transaction, balance = await _money_move(info, "deposit", input)
        return DepositPayload(transaction=transaction, balance=balance)

    @strawberry.mutation(description="Withdraw up to the available balance.")
    @returns_payload(WithdrawPayload)
    async def withdraw(self, info: Info, input: WithdrawInput) -> WithdrawPayload:
        transaction, balance = await _money_move(info, "withdraw", input)
        return WithdrawPayload(transaction=transaction, balance=balance)

    @strawberry.mutation(description="Place an order; it matches before this returns.")
    @returns_payload(PlaceOrderPayload)
    async def place_order(self, info: Info, input: PlaceOrderInput) -> PlaceOrderPayload:
        principal = info.context.require_principal()
        result = await info.context.services.exchange.place_order(principal, input.to_input())
        return _place_payload(await _instruments_of(info, [result]), result, datetime.now(UTC))

    @strawberry.mutation(description="Place up to 100 orders; each is accepted or rejected alone.")
    @returns_payload(PlaceOrdersPayload)
    async def place_orders(self, info: Info, inputs: list[PlaceOrderInput]) -> PlaceOrdersPayload:
        principal = info.context.require_principal()
        # Checked before anything is sent: a rejected call must place no order at all.
        if not 1 <= len(inputs) <= MAX_BULK_ORDERS:
            raise DomainError(
                f"send 1 to {MAX_BULK_ORDERS} orders", code="INVALID_INPUT", field="inputs"
            )
        converted: list[OrderInput | DomainError] = []
        for item in inputs:
            try:
                converted.append(item.to_input())
            except DomainError as error:
                converted.append(error)
        valid = [c for c in converted if isinstance(c, OrderInput)]
        placed = (
            await info.context.services.exchange.place_orders(principal, valid) if valid else []
        )
        instruments = await _instruments_of(info, placed)
        at = datetime.now(UTC)
        results = iter(placed)
        out = []
        for c in converted:
            if isinstance(c, DomainError):
                out.append(PlaceOrderPayload(errors=[UserError.from_domain(c)]))
            else:
                out.append(_place_payload(instruments, next(results), at))
        return PlaceOrdersPayload(results=out)

    @strawberry.mutation(description="Cancel an open order by id or clientOrderId.")
    @returns_payload(CancelOrderPayload)
    async def cancel_order(self, info: Info, input: CancelOrderInput) -> CancelOrderPayload:
        principal = info.context.require_principal()
        service = info.context.services.exchange
        result = await service.cancel_order(
            principal,
            order_id=order_id_arg(input.id) if input.id else None,
            client_order_id=input.client_order_id,
            account_id=account_id_arg(input.account_id) if input.account_id else None,
        )
        order = result["order"]
        ins = await service.instrument(order["symbol"])
        return CancelOrderPayload(order=Order.build(ins, order, None, datetime.now(UTC)))

    @strawberry.mutation(description="Cancel every open order of an account.")
    @returns_payload(CancelAllOrdersPayload)
    async def cancel_all_orders(
        self, info: Info, input: CancelAllOrdersInput
    ) -> CancelAllOrdersPayload:
        principal = info.context.require_principal()
        service = info.context.services.exchange
        result = await service.cancel_all(principal, account_id_arg(input.account_id), input.symbol)
        now = datetime.now(UTC)
        orders = []
        for o in result["orders"]:
            orders.append(Order.build(await service.instrument(o["symbol"]), o, None, now))
        return CancelAllOrdersPayload(orders=orders)


@strawberry.input(description="Credit an account (real money arriving, corrections).")
class AdminCreditAccountInput:
    account_id: strawberry.ID = strawberry.field(description="Account (global id).")
    asset: str = strawberry.field(description="Asset code.")
    amount: Decimal = strawberry.field(description="Positive amount.")
    reference: str | None = strawberry.field(default=None, description="Why / external id.")
    idempotency_key: str | None = strawberry.field(default=None, description="Retry-safe key.")


@strawberry.type(description="Result of adminSetInstrumentStatus.")
class InstrumentPayload:
    instrument: Instrument | None = strawberry.field(default=None, description="The instrument.")
    errors: list[UserError] = strawberry.field(default_factory=list, description="Failures.")


@strawberry.type
class ExchangeAdminMutation:
    @strawberry.mutation(description="ADMIN: credit an account from outside (audited).")
    @returns_payload(DepositPayload)
    async def admin_credit_account(
        self, info: Info, input: AdminCreditAccountInput
    ) -> DepositPayload:
        principal = info.context.require_principal()
        service = info.context.services.exchange
        account_id = account_id_arg(input.account_id)
        result = await service.admin_credit(
            principal,
            account_id,
            input.asset,
            input.amount,
            input.reference,
            input.idempotency_key,
        )
        await info.context.services.audit.record(
            "account.credit",
            actor_id=principal.user_id,
            target_type="account",
            target_id=str(account_id),
            data={"asset": input.asset, "amount": str(input.amount), "reference": input.reference},
        )
        decimals = await service.asset_decimals(input.asset)
        return DepositPayload(
            transaction=await transaction_from(info, result["transaction"]),
            balance=_balance(decimals, input.asset, result["balance"]),
        )

    @strawberry.mutation(description="ADMIN: halt or resume trading of an instrument.")
    @returns_payload(InstrumentPayload)
    async def admin_set_instrument_status(
        self, info: Info, symbol: str, halted: bool
    ) -> InstrumentPayload:
        principal = info.context.require_principal()
        service = info.context.services.exchange
        await service.set_halted(principal, symbol, halted)
        await info.context.services.audit.record(
            "instrument.status",
            actor_id=principal.user_id,
            target_type="instrument",
            target_id=symbol,
            data={"halted": halted},
        )
        return InstrumentPayload(instrument=Instrument.from_info(await service.instrument(symbol)))


# ---------------------------------------------------------------------- subscriptions


@strawberry.type(description="A change to one of your orders.")
class OrderEvent:
    sequence: int = strawberry.field(description="user topic sequence (gap = resubscribe).")
    order: Order = strawberry.field(description="The order after the change.")


@strawberry.type(description="An order-book message: a SNAPSHOT first, then DELTAs.")
class OrderBookEvent:
    type: str = strawberry.field(description="SNAPSHOT or DELTA.")
    symbol: str = strawberry.field(description="Instrument.")
    sequence: int = strawberry.field(description="book:SYMBOL sequence, +1 per DELTA.")
    bids: list[BookLevel] = strawberry.field(description="Bid levels (absolute sizes).")
    asks: list[BookLevel] = strawberry.field(description="Ask levels (absolute sizes).")


@strawberry.type(description="Live market summary of an instrument.")
class Ticker:
    symbol: str = strawberry.field(description="Instrument.")
    last: Decimal | None = strawberry.field(description="Last trade price.")
    best_bid: Decimal | None = strawberry.field(description="Highest bid.")
    best_ask: Decimal | None = strawberry.field(description="Lowest ask.")
    change_percent_24h: Decimal | None = strawberry.field(description="24h change, percent.")
    volume_24h: Decimal = strawberry.field(description="24h base volume.")
    time: datetime = strawberry.field(description="When this was computed (UTC).")


class StreamGap(DomainError):
    code = "STREAM_GAP"


async def _topic(info: Info, topic: str) -> AsyncIterator[dict[str, Any]]:
    """Messages of a topic; a final overflow GAP ends the stream with STREAM_GAP."""
    async with info.context.services.pubsub.subscribe(topic) as sub:
        async for msg in sub:
            if is_gap(msg):
                if msg.get("final"):
                    raise StreamGap("you fell behind; resubscribe for a fresh snapshot")
                raise StreamGap("events may have been lost; resubscribe")
            yield msg


@strawberry.type
class ExchangeSubscription:
    @strawberry.subscription(description="Every change to your orders.")
    async def my_orders(self, info: Info) -> AsyncGenerator[OrderEvent, None]:
        principal = info.context.require_principal()
        service = info.context.services.exchange
        async for msg in track(info, _topic(info, f"user:{principal.user_id}")):
            if msg["type"] == "ORDER":
                d = msg["data"]
                ins = await service.instrument(d["symbol"])
                yield OrderEvent(
                    sequence=msg["seq"], order=Order.build(ins, d, None, _ts(msg["ts"]))
                )

    @strawberry.subscription(description="Your fills as they happen.")
    async def my_fills(self, info: Info) -> AsyncGenerator[Fill, None]:
        principal = info.context.require_principal()
        service = info.context.services.exchange
        async for msg in track(info, _topic(info, f"user:{principal.user_id}")):
            if msg["type"] == "FILL":
                d = msg["data"]
                yield Fill.from_event(await service.instrument(d["symbol"]), d)

    @strawberry.subscription(description="Public trades of an instrument.")
    async def trades(self, info: Info, symbol: str) -> AsyncGenerator[Trade, None]:
        ins = await info.context.services.exchange.instrument(symbol)
        async for msg in track(info, _topic(info, f"trades:{symbol}")):
            yield Trade.from_event(ins, msg["data"])

    @strawberry.subscription(
        description="The book: a SNAPSHOT, then DELTA events with absolute level sizes "
        "(0 removes a level) and gap-free sequence numbers."
    )
    async def order_book(
        self, info: Info, symbol: str, depth: int = 20
    ) -> AsyncGenerator[OrderBookEvent, None]:
        service = info.context.services.exchange
        ins = await service.instrument(symbol)
        async with info.context.services.pubsub.subscribe(f"book:{symbol}") as sub:
            # Subscribed first, then the snapshot: deltas at or before it are skipped.
            snap = await service.order_book(symbol, depth)
            seq = snap["seq"]
            yield OrderBookEvent(
                type="SNAPSHOT",
                symbol=symbol,
                sequence=seq,
                bids=_levels(ins, snap["bids"]),
                asks=_levels(ins, snap["asks"]),
            )
            async for msg in track(info, sub):
                if is_gap(msg):
                    raise StreamGap("the book stream had a gap; resubscribe")
                if msg["seq"] <= seq:
                    continue
                if msg["seq"] != seq + 1:
                    raise StreamGap(f"expected book sequence {seq + 1}, got {msg['seq']}")
                seq = msg["seq"]
                changes = msg["data"]["changes"]
                yield OrderBookEvent(
                    type="DELTA",
                    symbol=symbol,
                    sequence=seq,
                    bids=_levels(ins, [(p, q) for s, p, q in changes if s == "BUY"]),
                    asks=_levels(ins, [(p, q) for s, p, q in changes if s == "SELL"]),
                )

    @strawberry.subscription(
        description="Last price, best bid/ask and 24h change; at most 10 updates a second each."
    )
    async def ticker(self, info: Info, symbols: list[str]) -> AsyncGenerator[Ticker, None]:
        if not 1 <= len(symbols) <= 50:
            raise DomainError("give 1 to 50 symbols", code="INVALID_INPUT", field="symbols")
        service = info.context.services.exchange
        infos = {s: await service.instrument(s) for s in symbols}
        queue: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue(maxsize=1000)

        async def pump(symbol: str) -> None:
            async for msg in _topic(info, f"ticker:{symbol}"):
                if queue.full():
                    queue.get_nowait()
                queue.put_nowait((symbol, msg["data"]))

        tasks = [asyncio.create_task(pump(s)) for s in symbols]
        try:
            async for symbol, d in track(info, _queue_iter(queue, tasks)):
                ins = infos[symbol]
                yield Ticker(
                    symbol=symbol,
                    last=ins.price(d.get("last")),
                    best_bid=ins.price(d.get("best_bid")),
                    best_ask=ins.price(d.get("best_ask")),
                    change_percent_24h=(
                        Decimal(str(d["change_percent"]))
                        if d.get("change_percent") is not None
                        else None
                    ),
                    volume_24h=ins.qty(d.get("volume", 0)) or Decimal(0),
                    time=_ts(d["ts"]),
                )
        finally:
            for t in tasks:
                t.cancel()


async def _queue_iter(
    queue: asyncio.Queue[tuple[str, dict[str, Any]]], tasks: list[asyncio.Task[None]]
) -> AsyncIterator[tuple[str, dict[str, Any]]]:
    while True:
        getter = asyncio.ensure_future(queue.get())
        done, _ = await asyncio.wait([getter, *tasks], return_when=asyncio.FIRST_COMPLETED)
        if getter in done:
            yield getter.result()
            continue
        getter.cancel()
        for t in tasks:
            if t.done() and t.exception() is not None:
                raise t.exception()  # type: ignore[misc]
