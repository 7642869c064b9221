"""Exchange business rules on the API side: validate, convert, send to the sequencer, read.

Writes never happen here: every change is a command to the single-writer sequencer over
the bus. Reads come from the database with authorization inside the query
(``accounts_readable_by``), so rows a caller may not see are never loaded.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import Select, and_, func, or_, select

from tradegraph.bus import CommandBus
from tradegraph.db import Database, utcnow
from tradegraph.errors import DomainError, NotFound
from tradegraph.exchange import models as m
from tradegraph.exchange.book import OrderStatus
from tradegraph.exchange.engine import CLIENT_ORDER_ID_RE
from tradegraph.identity.models import AccessLevel
from tradegraph.identity.principal import Principal
from tradegraph.money import from_minor, to_minor

_IDEMPOTENCY_RE = re.compile(r"^[A-Za-z0-9._:/-]{1,64}$")
USER_ACCOUNT_KINDS = {m.AccountKind.SPOT, m.AccountKind.PAPER}
MAX_BULK_ORDERS = 100


@dataclass(frozen=True)
class InstrumentInfo:
    """An instrument with the decimals needed to convert at the API edge."""

    row: m.Instrument
    base_decimals: int
    quote_decimals: int
    # Copied from the row: an ORM attribute read costs ~10x a plain one, and these are
    # read for every price and quantity rendered.
    price_decimals: int = field(init=False)
    qty_decimals: int = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "price_decimals", self.row.price_decimals)
        object.__setattr__(self, "qty_decimals", self.row.qty_decimals)

    @property
    def symbol(self) -> str:
        return self.row.symbol

    def price(self, units: int | None) -> Decimal | None:
        return None if units is None else from_minor(units, self.price_decimals)

    def qty(self, units: int | None) -> Decimal | None:
        return None if units is None else from_minor(units, self.qty_decimals)

    def quote(self, units: int | None) -> Decimal | None:
        return None if units is None else from_minor(units, self.quote_decimals)


@dataclass
class OrderInput:
    """A placement as the API receives it (Decimal at the edge)."""

    account_id: int
    symbol: str
    side: str
    type: str
    quantity: Decimal | None = None
    price: Decimal | None = None
    stop_price: Decimal | None = None
    quote_quantity: Decimal | None = None
    time_in_force: str = "GTC"
    post_only: bool = False
    client_order_id: str | None = None
    self_trade_prevention: str = "EXPIRE_TAKER"


def accounts_readable_by(principal: Principal) -> Select[m.Account]:
    stmt = select(m.Account)
    if not principal.is_admin:
        stmt = stmt.where(m.Account.owner_id == principal.user_id)
    return stmt


def owned_account_ids(principal: Principal) -> Select[int]:
    return select(m.Account.id).where(m.Account.owner_id == principal.user_id)


def engine_error(result: dict[str, Any]) -> None:
    """Raise the sequencer's error result as the ``DomainError`` it was."""
    error = result.get("error")
    if error:
        raise DomainError(error["message"], code=error["code"], field=error.get("field"))


class ExchangeService:
    def __init__(self, db: Database, bus: CommandBus, *, request_timeout: float = 10.0) -> None:
        self.db = db
        self.bus = bus
        self.request_timeout = request_timeout
        self._instruments: dict[str, InstrumentInfo] = {}
        self._assets: dict[str, int] = {}

    # ---------------------------------------------------------------- reference

    async def load_reference(self) -> None:
        async with self.db.session() as session:
            assets = {a.code: a.decimals for a in await session.scalars(select(m.Asset))}
            rows = list(await session.scalars(select(m.Instrument).order_by(m.Instrument.symbol)))
        self._assets = assets
        self._instruments = {
            r.symbol: InstrumentInfo(r, assets[r.base_asset], assets[r.quote_asset]) for r in rows
        }

    async def instruments(self) -> list[InstrumentInfo]:
        await self.load_reference()
        return list(self._instruments.values())

    async def instrument(self, symbol: str, *, refresh: bool = False) -> InstrumentInfo:
        info = self._instruments.get(symbol)
        if info is None or refresh:
            await self.load_reference()
            info = self._instruments.get(symbol)
        if info is None:
            raise DomainError(
                f"unknown instrument {symbol!r}", code="UNKNOWN_INSTRUMENT", field="symbol"
            )
        return info

    async def asset_decimals(self, code: str) -> int:
        if code not in self._assets:
            await self.load_reference()
        if code not in self._assets:
            raise DomainError(f"unknown asset {code!r}", code="UNKNOWN_ASSET", field="asset")
        return self._assets[code]

    # ----------------------------------------------------------------- commands

    async def _send(self, kind: str, payload: dict[str, Any]) -> dict[str, Any]:
        result = await self.bus.request(kind, payload, timeout=self.request_timeout)
        engine_error(result)
        return result

    @staticmethod
    def _require_trader(principal: Principal) -> None:
        principal.require_scope("trade")

    async def open_account(
        self, principal: Principal, kind: m.AccountKind, name: str | None
    ) -> m.Account:
        self._require_trader(principal)
        if kind not in USER_ACCOUNT_KINDS:
            raise DomainError(
                "you can open SPOT or PAPER accounts", code="INVALID_INPUT", field="kind"
            )
        label = (name or kind.value.title()).strip()
        if not 1 <= len(label) <= 64:
            raise DomainError("name must be 1 to 64 characters", code="INVALID_INPUT", field="name")
        async with self.db.session() as session:
            count = len(list(await session.scalars(owned_account_ids(principal))))
        if count >= 20:
            raise DomainError("at most 20 accounts per user", code="LIMIT_REACHED")
        result = await self._send(
            "open_account", {"owner_id": principal.user_id, "kind": kind.value, "name": label}
        )
        account = await self.account(principal, int(result["account_id"]))
        assert account is not None
        return account

    async def _money(
        self,
        kind: str,
        principal: Principal,
        account_id: int,
        asset: str,
        amount: Decimal,
        idempotency_key: str | None,
    ) -> dict[str, Any]:
        self._require_trader(principal)
        decimals = await self.asset_decimals(asset)
        units = to_minor(amount, decimals, code="INVALID_AMOUNT", field="amount", allow_zero=False)
        if idempotency_key is not None and not _IDEMPOTENCY_RE.match(idempotency_key):
            raise DomainError(
                "idempotencyKey must be 1 to 64 of [A-Za-z0-9._:/-]",
                code="INVALID_INPUT",
                field="idempotencyKey",
            )
        params = {"account_id": account_id, "asset": asset, "amount": units, "kind": kind}
        return await self._send(
            kind,
            {
                **params,
                "user_id": principal.user_id,
                "idempotency_key": idempotency_key,
                "params_hash": hashlib.sha256(
                    json.dumps(params, sort_keys=True).encode()
                ).hexdigest(),
            },
        )

    async def deposit(
        self,
        principal: Principal,
        account_id: int,
        asset: str,
        amount: Decimal,
        idempotency_key: str | None,
    ) -> dict[str, Any]:
        return await self._money("deposit", principal, account_id, asset, amount, idempotency_key)

    async def withdraw(
        self,
        principal: Principal,
        account_id: int,
        asset: str,
        amount: Decimal,
        idempotency_key: str | None,
    ) -> dict[str, Any]:
        return await self._money("withdraw", principal, account_id, asset, amount, idempotency_key)

    async def admin_credit(
        self,
        admin: Principal,
        account_id: int,
        asset: str,
        amount: Decimal,
        reference: str | None,
        idempotency_key: str | None,
    ) -> dict[str, Any]:
        admin.require_admin()
        decimals = await self.asset_decimals(asset)
        units = to_minor(amount, decimals, code="INVALID_AMOUNT", field="amount", allow_zero=False)
        params = {"account_id": account_id, "asset": asset, "amount": units, "kind": "credit"}
        return await self._send(
            "credit",
            {
                **params,
                "admin": True,
                "reference": (reference or "")[:128] or None,
                "idempotency_key": idempotency_key,
                "params_hash": hashlib.sha256(
                    json.dumps(params, sort_keys=True).encode()
                ).hexdigest(),
            },
        )

    async def provider_deposit(
        self, account_id: int, asset: str, amount: Decimal, reference: str
    ) -> dict[str, Any]:
        """A signed payment-provider deposit: credited once per provider reference."""
        decimals = await self.asset_decimals(asset)
        units = to_minor(amount, decimals, code="INVALID_AMOUNT", field="amount", allow_zero=False)
        params = {"account_id": account_id, "asset": asset, "amount": units, "kind": "webhook"}
        return await self._send(
            "credit",
            {
                **params,
                "admin": True,
                "reference": reference,
                "idempotency_key": f"webhook:{reference}",
                "params_hash": hashlib.sha256(
                    json.dumps(params, sort_keys=True).encode()
                ).hexdigest(),
            },
        )

    async def to_engine_order(self, order: OrderInput) -> dict[str, Any]:
        """Shape-check and convert one placement (tick/lot are exact or an error)."""
        return self._engine_order(await self.instrument(order.symbol), order)

    @staticmethod
    def _engine_order(info: InstrumentInfo, order: OrderInput) -> dict[str, Any]:
        price_decimals = info.price_decimals
        if order.client_order_id is not None and not CLIENT_ORDER_ID_RE.fullmatch(
            order.client_order_id
        ):
            raise DomainError(
                "clientOrderId must be 1 to 36 of [A-Za-z0-9._:/-]",
                code="INVALID_CLIENT_ORDER_ID",
                field="clientOrderId",
            )

        def price(value: Decimal | None, field: str) -> int | None:
            if value is None:
                return None
            return to_minor(
                value, price_decimals, code="INVALID_PRICE_TICK", field=field, allow_zero=False
            )

        quantity = None
        if order.quantity is not None:
            quantity = to_minor(
                order.quantity,
                info.qty_decimals,
                code="INVALID_QUANTITY_STEP",
                field="quantity",
                allow_zero=False,
            )
        quote_quantity = None
        if order.quote_quantity is not None:
            quote_quantity = to_minor(
                order.quote_quantity,
                info.quote_decimals,
                code="INVALID_AMOUNT",
                field="quoteQuantity",
                allow_zero=False,
            )
        command: dict[str, Any] = {
            "account_id": order.account_id,
            "symbol": order.symbol,
            "side": order.side,
            "type": order.type,
            "time_in_force": order.time_in_force,
            "stp": order.self_trade_prevention,
        }
        # An absent key is None (False for post_only): a limit order travels with 8 keys
        # of 12, which the worker encodes and the engine decodes a hundred times a call.
        optional = (
            ("quantity", quantity),
            ("price", price(order.price, "price")),
            ("stop_price", price(order.stop_price, "stopPrice")),
            ("quote_quantity", quote_quantity),
            ("client_order_id", order.client_order_id),
        )
        for key, value in optional:
            if value is not None:
                command[key] = value
        if order.post_only:
            command["post_only"] = True
        return command

    def _trading_flags(self, principal: Principal) -> dict[str, Any]:
        return {
            "user_id": principal.user_id,
            "limited": principal.access_level is AccessLevel.LIMITED,
        }

    async def place_order(self, principal: Principal, order: OrderInput) -> dict[str, Any]:
        self._require_trader(principal)
        payload = await self.to_engine_order(order)
        return await self._send("place", {**self._trading_flags(principal), "order": payload})

    async def place_orders(
        self, principal: Principal, orders: Sequence[OrderInput]
    ) -> list[dict[str, Any]]:
        """Each order is accepted or rejected on its own; results keep the input order."""
        self._require_trader(principal)
        if not 1 <= len(orders) <= MAX_BULK_ORDERS:
            raise DomainError(
                f"send 1 to {MAX_BULK_ORDERS} orders", code="INVALID_INPUT", field="inputs"
            )
        results: list[dict[str, Any] | None] = [None] * len(orders)
        converted: list[tuple[int, dict[str, Any]]] = []
        instruments: dict[str, InstrumentInfo] = {}  # one lookup per symbol
        for i, order in enumerate(orders):
            try:
                info = instruments.get(order.symbol)
                if info is None:
                    info = instruments[order.symbol] = await self.instrument(order.symbol)
                converted.append((i, self._engine_order(info, order)))
            except DomainError as error:
                results[i] = {
                    "error": {"code": error.code, "message": error.message, "field": error.field}
                }
        if converted:
            reply = await self.bus.request(
                "place_many",
                {**self._trading_flags(principal), "orders": [p for _, p in converted]},
                timeout=self.request_timeout,
            )
            engine_error(reply)
            for (i, _), result in zip(converted, reply["results"], strict=True):
                results[i] = result
        return [r for r in results if r is not None]

    async def cancel_order(
        self,
        principal: Principal,
        *,
        order_id: int | None,
        client_order_id: str | None,
        account_id: int | None,
    ) -> dict[str, Any]:
        self._require_trader(principal)
        row = await self.find_order(
            principal, order_id=order_id, client_order_id=client_order_id, account_id=account_id
        )
        if row is None:
            raise NotFound("order not found", code="ORDER_NOT_FOUND", field="id")
        if row.status not in (OrderStatus.NEW, OrderStatus.PARTIALLY_FILLED):
            raise DomainError(
                f"the order is already {row.status.value}", code="ORDER_NOT_OPEN", field="id"
            )
        return await self._send(
            "cancel",
            {"user_id": principal.user_id, "account_id": row.account_id, "order_id": row.id},
        )

    async def cancel_all(
        self, principal: Principal, account_id: int, symbol: str | None
    ) -> dict[str, Any]:
        self._require_trader(principal)
        if symbol is not None:
            await self.instrument(symbol)
        return await self._send(
            "cancel_all",
            {"user_id": principal.user_id, "account_id": account_id, "symbol": symbol},
        )

    async def set_halted(self, admin: Principal, symbol: str, halted: bool) -> dict[str, Any]:
        admin.require_admin()
        await self.instrument(symbol)
        result = await self._send("halt" if halted else "resume", {"symbol": symbol})
        await self.instrument(symbol, refresh=True)
        return result

    async def order_book(self, symbol: str, depth: int) -> dict[str, Any]:
        await self.instrument(symbol)
        if not 1 <= depth <= 200:
            raise DomainError("depth must be 1 to 200", code="INVALID_INPUT", field="depth")
        return await self._send("book", {"symbol": symbol, "depth": depth})

    # -------------------------------------------------------------------- reads

    async def accounts(self, principal: Principal) -> list[m.Account]:
        async with self.db.session() as session:
            # "Your accounts", also for admins (they reach others' through node/admin).
            stmt = select(m.Account).where(m.Account.owner_id == principal.user_id)
            return list(await session.scalars(stmt.order_by(m.Account.id)))

    async def account(self, principal: Principal, account_id: int) -> m.Account | None:
        async with self.db.session() as session:
            return await session.scalar(
                accounts_readable_by(principal).where(m.Account.id == account_id)
            )

    async def balances_for(self, account_ids: Sequence[int]) -> dict[int, list[m.Balance]]:
        """Balances of many accounts in one query (DataLoader batch)."""
        out: dict[int, list[m.Balance]] = {i: [] for i in account_ids}
        async with self.db.session() as session:
            rows = await session.scalars(
                select(m.Balance)
                .where(m.Balance.account_id.in_(list(account_ids)))
                .order_by(m.Balance.asset)
            )
            for row in rows:
                out[row.account_id].append(row)
        return out

    async def accounts_by_id(
        self, principal: Principal, ids: Sequence[int]
    ) -> dict[int, m.Account]:
        async with self.db.session() as session:
            rows = await session.scalars(
                accounts_readable_by(principal).where(m.Account.id.in_(list(ids)))
            )
            return {r.id: r for r in rows}

    async def find_order(
        self,
        principal: Principal,
        *,
        order_id: int | None = None,
        client_order_id: str | None = None,
        account_id: int | None = None,
    ) -> m.Order | None:
        if order_id is None and client_order_id is None:
            raise DomainError("give id or clientOrderId", code="INVALID_INPUT", field="id")
        stmt = select(m.Order).where(m.Order.account_id.in_(owned_account_ids(principal)))
        if order_id is not None:
            stmt = stmt.where(m.Order.id == order_id)
        if client_order_id is not None:
            stmt = stmt.where(m.Order.client_order_id == client_order_id)
        if account_id is not None:
            stmt = stmt.where(m.Order.account_id == account_id)
        stmt = stmt.order_by(m.Order.id.desc()).limit(1)
        async with self.db.session() as session:
            return await session.scalar(stmt)

    async def orders(
        self,
        principal: Principal,
        *,
        account_id: int | None,
        symbol: str | None,
        statuses: Sequence[OrderStatus] | None,
        limit: int,
        before_id: int | None,
    ) -> list[m.Order]:
        """Newest first, keyset on the order id."""
        stmt = select(m.Order).where(m.Order.account_id.in_(owned_account_ids(principal)))
        if account_id is not None:
            stmt = stmt.where(m.Order.account_id == account_id)
        if symbol is not None:
            stmt = stmt.where(m.Order.symbol == symbol)
        if statuses:
            stmt = stmt.where(m.Order.status.in_(list(statuses)))
        if before_id is not None:
            stmt = stmt.where(m.Order.id < before_id)
        stmt = stmt.order_by(m.Order.id.desc()).limit(limit)
        async with self.db.session() as session:
            return list(await session.scalars(stmt))

    async def orders_by_id(self, principal: Principal, ids: Sequence[int]) -> dict[int, m.Order]:
        stmt = select(m.Order).where(
            m.Order.id.in_(list(ids)), m.Order.account_id.in_(owned_account_ids(principal))
        )
        async with self.db.session() as session:
            return {o.id: o for o in await session.scalars(stmt)}

    async def fills(
        self,
        principal: Principal,
        *,
        account_id: int | None,
        symbol: str | None,
        limit: int,
        before_id: int | None,
    ) -> list[tuple[m.Trade, int]]:
        """The caller's side of each trade, newest first: ``(trade, account_id)`` pairs."""
        owned = owned_account_ids(principal)
        if account_id is not None:
            owned = owned.where(m.Account.id == account_id)
        stmt = select(m.Trade).where(
            or_(m.Trade.taker_account_id.in_(owned), m.Trade.maker_account_id.in_(owned))
        )
        if symbol is not None:
            stmt = stmt.where(m.Trade.symbol == symbol)
        if before_id is not None:
            stmt = stmt.where(m.Trade.id < before_id)
        stmt = stmt.order_by(m.Trade.id.desc()).limit(limit)
        async with self.db.session() as session:
            trades = list(await session.scalars(stmt))
            mine = set(await session.scalars(owned))
        out: list[tuple[m.Trade, int]] = []
        for t in trades:
            if t.taker_account_id in mine:
                out.append((t, t.taker_account_id))
            if t.maker_account_id in mine and t.maker_account_id != t.taker_account_id:
                out.append((t, t.maker_account_id))
        return out

    async def fills_for_orders(self, order_ids: Sequence[int]) -> dict[int, list[m.Trade]]:
        """Trades of many orders in one query (DataLoader batch)."""
        ids = list(order_ids)
        out: dict[int, list[m.Trade]] = {i: [] for i in ids}
        stmt = (
            select(m.Trade)
            .where(or_(m.Trade.taker_order_id.in_(ids), m.Trade.maker_order_id.in_(ids)))
            .order_by(m.Trade.id)
        )
        async with self.db.session() as session:
            for t in await session.scalars(stmt):
                if t.taker_order_id in out:
                    out[t.taker_order_id].append(t)
                if t.maker_order_id in out and t.maker_order_id != t.taker_order_id:
                    out[t.maker_order_id].append(t)
        return out

    async def stats_24h(self, symbols: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Rolling 24h open/high/low/last/volume per symbol from the tape (two queries)."""
        since = utcnow() - timedelta(hours=24)
        agg = (
            select(
                m.Trade.symbol,
                func.min(m.Trade.id),
                func.max(m.Trade.id),
                func.min(m.Trade.price),
                func.max(m.Trade.price),
                func.sum(m.Trade.qty),
                func.sum(m.Trade.notional),
                func.count(),
            )
            .where(m.Trade.symbol.in_(list(symbols)), m.Trade.created_at >= since)
            .group_by(m.Trade.symbol)
        )
        async with self.db.session() as session:
            rows = (await session.execute(agg)).all()
            ends = {i for r in rows for i in (r[1], r[2])}
            prices = (
                dict(
                    (
                        await session.execute(
                            select(m.Trade.id, m.Trade.price).where(m.Trade.id.in_(ends))
                        )
                    ).all()
                )
                if ends
                else {}
            )
        out: dict[str, dict[str, Any]] = {}
        for symbol, first_id, last_id, low, high, volume, quote_volume, count in rows:
            out[symbol] = {
                "open": prices[first_id],
                "last": prices[last_id],
                "high": high,
                "low": low,
                "volume": int(volume or 0),
                "quote_volume": int(quote_volume or 0),
                "trades": int(count),
            }
        return out

    async def recent_trades(self, symbol: str, limit: int) -> list[m.Trade]:
        await self.instrument(symbol)
        stmt = (
            select(m.Trade).where(m.Trade.symbol == symbol).order_by(m.Trade.id.desc()).limit(limit)
        )
        async with self.db.session() as session:
            return list(await session.scalars(stmt))

    async def transactions(
        self,
        principal: Principal,
        *,
        account_id: int | None,
        limit: int,
        after: tuple[str, str] | None,
    ) -> list[m.Transaction]:
        stmt = select(m.Transaction).where(
            m.Transaction.account_id.in_(owned_account_ids(principal))
        )
        if account_id is not None:
            stmt = stmt.where(m.Transaction.account_id == account_id)
        if after is not None:
            at, tx_id = after
            when = datetime.fromisoformat(at)
            stmt = stmt.where(
                or_(
                    m.Transaction.created_at < when,
                    and_(m.Transaction.created_at == when, m.Transaction.id < tx_id),
                )
            )
        stmt = stmt.order_by(m.Transaction.created_at.desc(), m.Transaction.id.desc()).limit(limit)
        async with self.db.session() as session:
            return list(await session.scalars(stmt))
