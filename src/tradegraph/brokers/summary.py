"""Account summaries: the broker's live balance and portfolio joined with what TradeGraph
stored (contracts bought here, the last snapshot), per link and for all of a user's links
in one currency.

Every refresh stores the snapshot (``broker_positions``, ``broker_balances``), so when a
broker is down the last known numbers are still shown, flagged ``stale``, instead of an
error page. Definitions (per link, in the account's currency):

* ``balance``: cash as the broker reports it (Deriv balance, Kite equity funds, BingX
  margin balance);
* ``unrealizedPnl``: the broker's open P/L; for Deriv open contracts, bid minus price paid;
* ``equity``: balance + market value of things bought with cash (Deriv contracts at their
  bid, Kite holdings at last price) + open P/L of margin positions (Kite intraday, BingX);
* ``realizedPnl``: profit of contracts bought through TradeGraph that have closed;
* ``openPositions``: portfolio lines (holdings, positions, open contracts).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import ROUND_HALF_EVEN, Decimal, localcontext
from typing import Any

from sqlalchemy import delete, func, select

from tradegraph.brokers.adapters.bingx import BingXBroker
from tradegraph.brokers.adapters.deriv import DerivBroker, DerivClient
from tradegraph.brokers.adapters.kite import KiteBroker
from tradegraph.brokers.common import (
    BrokerContext,
    currency_decimals,
    from_units,
    open_broker,
    scale_for,
    to_units,
)
from tradegraph.brokers.linking import LinkingService, effective_status
from tradegraph.brokers.models import (
    BrokerBalance,
    BrokerContract,
    BrokerLink,
    ContractState,
    LinkStatus,
)
from tradegraph.brokers.models import BrokerPosition as PositionRow
from tradegraph.brokers.protocol import (
    BrokerAuthError,
    BrokerProvider,
    BrokerUnavailable,
    ContractDirection,
    ContractStatus,
    Position,
    PositionKind,
    PositionSide,
    to_decimal,
)
from tradegraph.brokers.trading import TradingService
from tradegraph.errors import DomainError
from tradegraph.identity.principal import Principal

MAX_PRICED_CONTRACTS = 50
MAX_SETTLE_CHECKS = 20
PARALLEL_LINKS = 4


@dataclass(frozen=True)
class Summary:
    """Balance, equity and P/L of one account (or a total) in one currency."""

    currency: str
    balance: Decimal
    equity: Decimal
    open_positions: int
    realized_pnl: Decimal
    unrealized_pnl: Decimal
    as_of: datetime
    stale: bool


@dataclass(frozen=True)
class AccountSummary:
    """One link's part of a portfolio summary; ``error`` says why it is missing/stale."""

    link: BrokerLink
    summary: Summary | None
    converted: Summary | None
    error_code: str | None = None
    error: str | None = None
    in_total: bool = False


@dataclass(frozen=True)
class PortfolioSummary:
    total: Summary
    accounts: list[AccountSummary]
    rates: dict[str, Decimal] = field(default_factory=dict)


@dataclass
class _Line:
    position: Position
    market_value: Decimal | None = None


@dataclass
class _Snapshot:
    currency: str
    balance: Decimal
    equity: Decimal
    unrealized: Decimal
    lines: list[_Line]


class SummaryService:
    """Builds summaries, refreshing the stored snapshot from the broker when it can."""

    def __init__(self, ctx: BrokerContext, linking: LinkingService, trading: TradingService):
        self.ctx = ctx
        self.linking = linking
        self.trading = trading

    # -- one link ----------------------------------------------------------------------

    async def link_summary(self, principal: Principal, link_id: str) -> Summary:
        link = await self.linking.owned_link(principal, link_id)
        return await self.summary_of(link)

    async def summary_of(self, link: BrokerLink) -> Summary:
        """Live when possible; otherwise the stored snapshot marked stale; else an error."""
        now = self.ctx.clock.now()
        failure: DomainError | None = None
        status = effective_status(link, now)
        if status is LinkStatus.ACTIVE and link.credentials_enc:
            try:
                snapshot = await self.ctx.bounded(self._live(link))
            except BrokerAuthError as exc:
                await self.linking.mark_error(link, exc)
                failure = exc
            except DomainError as exc:
                failure = exc
            else:
                saved = await self._save(link, snapshot)
                return await self._with_realized(link, _Stored(saved).summary(stale=False))
        else:
            failure = DomainError(
                f"this broker link is {status.value}; showing the last known numbers",
                code="BROKER_LINK_INACTIVE",
                field="linkId",
            )
        stored = await self._stored(link)
        if stored is None:
            assert failure is not None
            raise failure
        return await self._with_realized(link, stored.summary(stale=True))

    async def _with_realized(self, link: BrokerLink, summary: Summary) -> Summary:
        async with self.ctx.db.session() as session:
            rows = await session.execute(
                select(BrokerContract.decimals, func.sum(BrokerContract.profit))
                .where(
                    BrokerContract.link_id == link.id,
                    BrokerContract.status != ContractState.OPEN,
                    BrokerContract.profit.is_not(None),
                )
                .group_by(BrokerContract.decimals)
            )
            realized = sum(
                (from_units(int(total), int(decimals)) for decimals, total in rows if total),
                Decimal(0).scaleb(-currency_decimals(summary.currency)),
            )
        return Summary(
            currency=summary.currency,
            balance=summary.balance,
            equity=summary.equity,
            open_positions=summary.open_positions,
            realized_pnl=realized,
            unrealized_pnl=summary.unrealized_pnl,
            as_of=summary.as_of,
            stale=summary.stale,
        )

    # -- live data ---------------------------------------------------------------------

    async def _live(self, link: BrokerLink) -> _Snapshot:
        credentials = self.ctx.vault.open(link)
        broker = open_broker(self.ctx.endpoints, link.provider, credentials, self.ctx.policy)
        async with broker:
            if isinstance(broker, DerivBroker):
                return await self._deriv(link, broker)
            if isinstance(broker, KiteBroker):
                return await _kite(broker)
            return await _bingx(broker)

    async def _deriv(self, link: BrokerLink, broker: DerivBroker) -> _Snapshot:
        await broker.authorize()
        balance = await broker.client.balance()
        contracts = (await broker.client.portfolio())[:MAX_PRICED_CONTRACTS]
        bids = await asyncio.gather(*(_deriv_bid(broker.client, c.contract_id) for c in contracts))
        lines = []
        for contract, bid in zip(contracts, bids, strict=True):
            await self.trading.import_contract(link, contract)
            lines.append(
                _Line(
                    Position(
                        symbol=contract.symbol,
                        side=PositionSide.LONG
                        if contract.direction is ContractDirection.RISE
                        else PositionSide.SHORT,
                        quantity=Decimal(1),
                        kind=PositionKind.CONTRACT,
                        average_price=contract.buy_price,
                        mark_price=bid,
                        unrealized_pnl=bid - contract.buy_price,
                        currency=contract.currency,
                        position_id=contract.contract_id,
                    ),
                    market_value=bid,
                )
            )
        await self._settle_stored(link, broker, {c.contract_id for c in contracts})
        value = sum((line.market_value or Decimal(0) for line in lines), Decimal(0))
        unrealized = sum((line.position.unrealized_pnl or Decimal(0) for line in lines), Decimal(0))
        currency = balance.asset or link.currency or "USD"
        return _Snapshot(currency, balance.total, balance.total + value, unrealized, lines)

    async def _settle_stored(
        self, link: BrokerLink, broker: DerivBroker, still_open: set[str]
    ) -> None:
        """Contracts stored OPEN that left the portfolio have settled or been sold."""
        async with self.ctx.db.session() as session:
            rows = list(
                await session.scalars(
                    select(BrokerContract)
                    .where(
                        BrokerContract.link_id == link.id,
                        BrokerContract.status == ContractState.OPEN,
                        BrokerContract.contract_ref.not_in(still_open or {""}),
                    )
                    .order_by(BrokerContract.purchased_at)
                    .limit(MAX_SETTLE_CHECKS)
                )
            )
        for row in rows:
            current = await broker.contract(row.contract_ref)
            if current.status is not ContractStatus.OPEN:
                await self.trading.apply_state(row, current, closed_at=current.expiry_time)

    # -- storage -----------------------------------------------------------------------

    async def _save(self, link: BrokerLink, snapshot: _Snapshot) -> BrokerBalance:
        now = self.ctx.clock.now()
        decimals = scale_for(
            snapshot.balance,
            snapshot.equity,
            snapshot.unrealized,
            minimum=currency_decimals(snapshot.currency),
        )
        async with self.ctx.db.session() as session:
            await session.execute(delete(PositionRow).where(PositionRow.link_id == link.id))
            for line in snapshot.lines:
                p = line.position
                row_decimals = scale_for(
                    p.quantity,
                    p.average_price,
                    p.mark_price,
                    line.market_value,
                    p.unrealized_pnl,
                    minimum=currency_decimals(p.currency or snapshot.currency),
                )
                session.add(
                    PositionRow(
                        link_id=link.id,
                        user_id=link.user_id,
                        symbol=p.symbol[:64],
                        side=p.side.value,
                        kind=p.kind.value,
                        decimals=row_decimals,
                        quantity=to_units(p.quantity, row_decimals),
                        average_price=_opt_units(p.average_price, row_decimals),
                        mark_price=_opt_units(p.mark_price, row_decimals),
                        market_value=_opt_units(line.market_value, row_decimals),
                        unrealized_pnl=_opt_units(p.unrealized_pnl, row_decimals),
                        currency=p.currency,
                        position_ref=(p.position_id or None) and p.position_id[:64],
                        as_of=now,
                    )
                )
            balance = await session.get(BrokerBalance, link.id)
            if balance is None:
                balance = BrokerBalance(link_id=link.id)
                session.add(balance)
            balance.currency = snapshot.currency
            balance.decimals = decimals
            balance.balance = to_units(snapshot.balance, decimals)
            balance.equity = to_units(snapshot.equity, decimals)
            balance.unrealized_pnl = to_units(snapshot.unrealized, decimals)
            balance.open_positions = len(snapshot.lines)
            balance.as_of = now
            await session.commit()
        return balance

    async def _stored(self, link: BrokerLink) -> _Stored | None:
        async with self.ctx.db.session() as session:
            row = await session.get(BrokerBalance, link.id)
        return None if row is None else _Stored(row)

    async def positions(self, link: BrokerLink) -> list[PositionRow]:
        """The stored portfolio lines of a link (as of the last refresh)."""
        async with self.ctx.db.session() as session:
            return list(
                await session.scalars(
                    select(PositionRow)
                    .where(PositionRow.link_id == link.id)
                    .order_by(PositionRow.symbol, PositionRow.id)
                    .limit(500)
                )
            )

    # -- all links ---------------------------------------------------------------------

    async def portfolio(self, principal: Principal, currency: str) -> PortfolioSummary:
        """Every non-revoked link's summary, converted and totalled in ``currency`` (demo
        accounts are listed but not totalled).
        """
        rates = {k.upper(): v for k, v in self.ctx.settings.broker_fx_rates.items() if v > 0}
        target = (currency or "").strip().upper()
        if target not in rates:
            raise DomainError(
                f"no exchange rate for {target or 'an empty currency'}; "
                f"use one of {', '.join(sorted(rates))}",
                code="UNSUPPORTED_CURRENCY",
                field="currency",
            )
        links = await self.linking.list_links(principal)
        gate = asyncio.Semaphore(PARALLEL_LINKS)

        async def one(link: BrokerLink) -> AccountSummary:
            async with gate:
                try:
                    summary = await self.summary_of(link)
                except DomainError as exc:
                    return AccountSummary(link, None, None, exc.code, exc.message)
            rate = rates.get(summary.currency.upper())
            if rate is None:
                return AccountSummary(
                    link, summary, None, "NO_FX_RATE", f"no exchange rate for {summary.currency}"
                )
            converted = _convert(summary, rate / rates[target], target)
            # Demo (virtual money) accounts are listed but kept out of the totals.
            return AccountSummary(link, summary, converted, in_total=not _is_virtual(link))

        accounts = list(await asyncio.gather(*(one(link) for link in links)))
        now = self.ctx.clock.now()
        parts = [a.converted for a in accounts if a.converted is not None and a.in_total]
        places = Decimal(1).scaleb(-currency_decimals(target))

        def total(name: str) -> Decimal:
            value = sum((getattr(p, name) for p in parts), Decimal(0))
            return value.quantize(places, rounding=ROUND_HALF_EVEN)

        summary = Summary(
            currency=target,
            balance=total("balance"),
            equity=total("equity"),
            open_positions=sum(p.open_positions for p in parts),
            realized_pnl=total("realized_pnl"),
            unrealized_pnl=total("unrealized_pnl"),
            as_of=min((p.as_of for p in parts), default=now),
            stale=any(p.stale for p in parts) or any(a.converted is None for a in accounts),
        )
        used = {a.summary.currency.upper() for a in accounts if a.summary is not None} | {target}
        return PortfolioSummary(
            summary, accounts, {c: rates[c] for c in sorted(used) if c in rates}
        )


class _Stored:
    def __init__(self, row: BrokerBalance) -> None:
        self.row = row

    def summary(self, *, stale: bool) -> Summary:
        row = self.row
        return Summary(
            currency=row.currency,
            balance=from_units(row.balance, row.decimals),
            equity=from_units(row.equity, row.decimals),
            open_positions=row.open_positions,
            realized_pnl=Decimal(0),
            unrealized_pnl=from_units(row.unrealized_pnl, row.decimals),
            as_of=row.as_of,
            stale=stale,
        )


def _convert(summary: Summary, factor: Decimal, currency: str) -> Summary:
    """``summary`` in ``currency``, each amount rounded half-even to its decimals (so a
    total is exactly the sum of the lines a client shows).
    """
    places = Decimal(1).scaleb(-currency_decimals(currency))

    def conv(value: Decimal) -> Decimal:
        with localcontext() as ctx:
            ctx.prec = 40
            return (value * factor).quantize(places, rounding=ROUND_HALF_EVEN)

    return Summary(
        currency=currency,
        balance=conv(summary.balance),
        equity=conv(summary.equity),
        open_positions=summary.open_positions,
        realized_pnl=conv(summary.realized_pnl),
        unrealized_pnl=conv(summary.unrealized_pnl),
        as_of=summary.as_of,
        stale=summary.stale,
    )


def _is_virtual(link: BrokerLink) -> bool:
    try:
        return bool(json.loads(link.meta or "{}").get("is_virtual"))
    except ValueError:
        return False


def _opt_units(value: Decimal | None, decimals: int) -> int | None:
    return None if value is None else to_units(value, decimals)


async def _deriv_bid(client: DerivClient, contract_id: str) -> Decimal:
    """What Deriv would pay for an open contract now (``bid_price``)."""
    reply = await client.call(
        {"proposal_open_contract": 1, "contract_id": int(contract_id)}, what="contract value"
    )
    data: Any = reply.get("proposal_open_contract") or {}
    return to_decimal(data.get("bid_price", 0), provider=BrokerProvider.DERIV, what="bid price")


async def _kite(broker: KiteBroker) -> _Snapshot:
    balances = await broker.balances()
    balance = balances[0].total if balances else Decimal(0)
    lines = [_line(p) for p in await broker.positions()]
    return _finish("INR", balance, lines)


async def _bingx(broker: BingXBroker) -> _Snapshot:
    balances = await broker.balances()
    if not balances:
        raise BrokerUnavailable("BingX reported no balance", provider=BrokerProvider.BINGX)
    lines = [_line(p) for p in await broker.positions()]
    return _finish(balances[0].asset or "USDT", balances[0].total, lines)


def _line(position: Position) -> _Line:
    value = None
    if position.kind is PositionKind.HOLDING:
        price = position.mark_price if position.mark_price is not None else position.average_price
        value = None if price is None else position.quantity * price
    return _Line(position, value)


def _finish(currency: str, balance: Decimal, lines: Sequence[_Line]) -> _Snapshot:
    """Equity = cash + holdings at market + open P/L of margin positions."""
    equity = balance
    unrealized = Decimal(0)
    for line in lines:
        pnl = line.position.unrealized_pnl or Decimal(0)
        unrealized += pnl
        equity += line.market_value if line.market_value is not None else pnl
    return _Snapshot(currency, balance, equity, unrealized, list(lines))
