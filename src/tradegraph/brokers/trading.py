"""Trading through a linked broker: Deriv Rise/Fall contracts bought and sold.

The broker is the source of truth; TradeGraph stores what it reports (for audit, the
contract list and realized P/L) right after each call. A buy is never retried once sent
(the adapter refuses to), so an unclear outcome comes back as ``BROKER_UNAVAILABLE``
with "check the broker" rather than as a second contract; the next summary refresh
imports whatever the broker says exists.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any, cast

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from tradegraph.brokers.adapters.deriv import DURATION_UNITS, DerivBroker, DurationUnit
from tradegraph.brokers.common import (
    BrokerContext,
    currency_decimals,
    from_units,
    open_broker,
    scale_for,
    to_units,
)
from tradegraph.brokers.linking import LinkingService
from tradegraph.brokers.models import BrokerContract, BrokerLink, ContractState
from tradegraph.brokers.protocol import (
    BrokerAuthError,
    BrokerError,
    BrokerProvider,
    Contract,
    ContractDirection,
    ContractStatus,
)
from tradegraph.db import new_id
from tradegraph.errors import DomainError, NotFound
from tradegraph.identity.principal import Principal

log = logging.getLogger("tradegraph.brokers")

_SYMBOL_RE = re.compile(r"^[A-Za-z0-9_]{1,32}$")
MAX_DURATION = {"t": 10, "s": 86_400, "m": 1_440, "h": 24, "d": 365}
_STATE = {
    ContractStatus.OPEN: ContractState.OPEN,
    ContractStatus.WON: ContractState.WON,
    ContractStatus.LOST: ContractState.LOST,
    ContractStatus.SOLD: ContractState.SOLD,
}


def _positive_amount(value: Decimal | None, name: str, decimals: int) -> Decimal | None:
    if value is None:
        return None
    if not value.is_finite() or value <= 0:
        raise DomainError(f"{name} must be a positive amount", code="INVALID_AMOUNT", field=name)
    exponent = value.normalize().as_tuple().exponent
    if isinstance(exponent, int) and -exponent > decimals:
        raise DomainError(
            f"{name} has more than {decimals} decimal places", code="INVALID_AMOUNT", field=name
        )
    return value


class TradingService:
    """Buy and sell Deriv contracts on a user's own link; every outcome is audited."""

    def __init__(self, ctx: BrokerContext, linking: LinkingService) -> None:
        self.ctx = ctx
        self.linking = linking

    def _broker(self, link: BrokerLink) -> DerivBroker:
        credentials = self.ctx.vault.open(link)
        broker = open_broker(self.ctx.endpoints, link.provider, credentials, self.ctx.policy)
        return cast(DerivBroker, broker)

    async def buy_contract(
        self,
        principal: Principal,
        link_id: str,
        *,
        symbol: str,
        direction: ContractDirection,
        stake: Decimal,
        duration: int,
        duration_unit: str,
        max_price: Decimal | None = None,
        ip: str | None = None,
    ) -> BrokerContract:
        """Price and buy a Rise/Fall contract; stored and audited once Deriv confirms."""
        principal.require_scope("trade")
        if not _SYMBOL_RE.match(symbol or ""):
            raise DomainError("symbol looks like R_100 or frxEURUSD", field="symbol")
        if duration_unit not in DURATION_UNITS:
            raise DomainError("durationUnit must be t, s, m, h or d", field="durationUnit")
        if not 1 <= duration <= MAX_DURATION[duration_unit]:
            raise DomainError(
                f"duration must be 1 to {MAX_DURATION[duration_unit]} for unit {duration_unit}",
                field="duration",
            )
        link = await self.linking.owned_link(
            principal, link_id, provider=BrokerProvider.DERIV, active=True
        )
        decimals = currency_decimals(link.currency)
        _positive_amount(stake, "stake", decimals)
        _positive_amount(max_price, "maxPrice", decimals)
        request: dict[str, Any] = {
            "symbol": symbol,
            "direction": direction.value,
            "stake": stake,
            "duration": duration,
            "duration_unit": duration_unit,
        }
        try:
            async with self._broker(link) as broker:
                contract = await self.ctx.bounded(
                    broker.buy_contract(
                        symbol,
                        direction,
                        stake,
                        duration,
                        cast(DurationUnit, duration_unit),
                        max_price=max_price,
                    )
                )
        except DomainError as exc:
            await self._failed("broker.contract_buy_failed", principal, link, exc, request, ip)
            raise
        try:
            row = await self._store_bought(link, contract, stake, duration, duration_unit)
        except Exception:
            # Bought at the broker but not stored: say so loudly; the next portfolio sync
            # imports it (``import_contract``), so it is not lost.
            log.exception(
                "Deriv contract %s bought on link %s but not stored", contract.contract_id, link.id
            )
            raise
        await self.ctx.audit.record(
            "broker.contract_bought",
            actor_id=principal.user_id,
            target_type="broker_contract",
            target_id=row.id,
            ip=ip,
            data={
                **request,
                "link_id": link.id,
                "contract_ref": row.contract_ref,
                "buy_price": contract.buy_price,
                "payout": contract.payout,
                "currency": contract.currency,
            },
        )
        return row

    async def _store_bought(
        self,
        link: BrokerLink,
        contract: Contract,
        stake: Decimal,
        duration: int,
        duration_unit: str,
    ) -> BrokerContract:
        now = self.ctx.clock.now()
        decimals = scale_for(
            stake,
            contract.buy_price,
            contract.payout,
            minimum=currency_decimals(contract.currency or link.currency),
        )
        row = BrokerContract(
            id=new_id(),
            user_id=link.user_id,
            link_id=link.id,
            provider=link.provider,
            contract_ref=contract.contract_id,
            symbol=contract.symbol,
            direction=contract.direction.value,
            status=ContractState.OPEN,
            currency=contract.currency or link.currency or "",
            decimals=decimals,
            stake=to_units(stake, decimals),
            buy_price=to_units(contract.buy_price, decimals),
            payout=to_units(contract.payout, decimals),
            duration=duration,
            duration_unit=duration_unit,
            buy_transaction_ref=contract.transaction_id,
            description=(contract.description or "")[:512] or None,
            purchased_at=contract.purchase_time or now,
            expires_at=contract.expiry_time,
            created_at=now,
            updated_at=now,
        )
        async with self.ctx.db.session() as session:
            session.add(row)
            await session.commit()
        return row

    async def sell_contract(
        self,
        principal: Principal,
        contract_id: str,
        *,
        min_price: Decimal | None = None,
        ip: str | None = None,
    ) -> BrokerContract:
        """Sell an open contract at market (or not below ``min_price``)."""
        principal.require_scope("trade")
        row = await self.get_contract(principal, contract_id)
        if row.status is not ContractState.OPEN:
            raise DomainError(
                f"this contract is already {row.status.value}",
                code="CONTRACT_CLOSED",
                field="contractId",
            )
        link = await self.linking.owned_link(
            principal, row.link_id, provider=BrokerProvider.DERIV, active=True
        )
        _positive_amount(min_price, "minPrice", row.decimals)
        request = {"contract_ref": row.contract_ref, "min_price": min_price or Decimal(0)}
        try:
            async with self._broker(link) as broker:
                sold = await self.ctx.bounded(
                    broker.sell_contract(row.contract_ref, min_price=min_price or Decimal(0))
                )
        except DomainError as exc:
            await self._failed("broker.contract_sell_failed", principal, link, exc, request, ip)
            if exc.code == "BROKER_REJECTED":
                await self._refresh_after_refusal(link, row)
            raise
        row = await self.apply_state(row, sold, closed_at=self.ctx.clock.now())
        await self.ctx.audit.record(
            "broker.contract_sold",
            actor_id=principal.user_id,
            target_type="broker_contract",
            target_id=row.id,
            ip=ip,
            data={
                "link_id": link.id,
                "contract_ref": row.contract_ref,
                "sell_price": sold.sell_price,
                "profit": sold.profit,
                "currency": row.currency,
            },
        )
        return row

    async def _refresh_after_refusal(self, link: BrokerLink, row: BrokerContract) -> None:
        """Deriv refused the sale, often because the contract already settled: store that."""
        try:
            async with self._broker(link) as broker:
                current = await self.ctx.bounded(broker.contract(row.contract_ref))
        except DomainError:
            return
        if current.status is not ContractStatus.OPEN:
            await self.apply_state(row, current, closed_at=current.expiry_time)

    async def apply_state(
        self, row: BrokerContract, contract: Contract, *, closed_at: datetime | None
    ) -> BrokerContract:
        """Record what the broker reports about a stored contract (status, price, P/L)."""
        status = _STATE[contract.status]
        value = contract.sell_price
        if value is None and status is ContractState.WON:
            value = contract.payout
        if value is None and status is ContractState.LOST:
            value = Decimal(0)
        profit = contract.profit
        if profit is None and value is not None:
            profit = value - from_units(row.buy_price, row.decimals)
        async with self.ctx.db.session() as session:
            fresh = await session.get(BrokerContract, row.id, with_for_update=True)
            if fresh is None:
                raise NotFound("contract not found", field="contractId")
            if fresh.status is not ContractState.OPEN:
                return fresh  # settled already (a concurrent sale or sync): keep the first
            decimals = fresh.decimals
            if scale_for(value, profit) > decimals:
                # Keep every stored amount at one scale: widen the row when needed.
                wider = scale_for(value, profit, minimum=decimals)
                factor = 10 ** (wider - decimals)
                fresh.stake *= factor
                fresh.buy_price *= factor
                fresh.payout *= factor
                fresh.decimals = decimals = wider
            fresh.status = status
            fresh.sell_price = None if value is None else to_units(value, decimals)
            fresh.profit = None if profit is None else to_units(profit, decimals)
            fresh.sell_transaction_ref = (
                contract.transaction_id if status is ContractState.SOLD else None
            )
            fresh.closed_at = closed_at or self.ctx.clock.now()
            fresh.updated_at = self.ctx.clock.now()
            await session.commit()
            return fresh

    async def _failed(
        self,
        action: str,
        principal: Principal,
        link: BrokerLink,
        error: DomainError,
        request: dict[str, Any],
        ip: str | None,
    ) -> None:
        if isinstance(error, BrokerAuthError):
            await self.linking.mark_error(link, error)
        await self.ctx.audit.record(
            action,
            actor_id=principal.user_id,
            target_type="broker_link",
            target_id=link.id,
            ip=ip,
            data={
                **request,
                "code": error.code,
                "broker_code": error.broker_code if isinstance(error, BrokerError) else None,
                "reason": error.message[:200],
            },
        )

    # -- reading -----------------------------------------------------------------------

    async def get_contract(self, principal: Principal, contract_id: str) -> BrokerContract:
        async with self.ctx.db.session() as session:
            row = await session.scalar(
                select(BrokerContract).where(
                    BrokerContract.id == contract_id,
                    BrokerContract.user_id == principal.user_id,
                )
            )
        if row is None:
            raise NotFound("contract not found", field="contractId")
        return row

    async def get_many(self, principal: Principal, ids: Sequence[str]) -> list[BrokerContract]:
        stmt = select(BrokerContract).where(BrokerContract.id.in_(ids))
        if not principal.is_admin:
            stmt = stmt.where(BrokerContract.user_id == principal.user_id)
        async with self.ctx.db.session() as session:
            return list(await session.scalars(stmt))

    async def list_contracts(
        self,
        principal: Principal,
        *,
        link_id: str | None,
        open_only: bool,
        limit: int,
        after: tuple[datetime, str] | None,
    ) -> list[BrokerContract]:
        """Newest first, keyset-paginated on (purchased_at, id)."""
        stmt = (
            select(BrokerContract)
            .where(BrokerContract.user_id == principal.user_id)
            .order_by(BrokerContract.purchased_at.desc(), BrokerContract.id.desc())
            .limit(limit)
        )
        if link_id is not None:
            stmt = stmt.where(BrokerContract.link_id == link_id)
        if open_only:
            stmt = stmt.where(BrokerContract.status == ContractState.OPEN)
        if after is not None:
            at, row_id = after
            stmt = stmt.where(
                (BrokerContract.purchased_at < at)
                | ((BrokerContract.purchased_at == at) & (BrokerContract.id < row_id))
            )
        async with self.ctx.db.session() as session:
            return list(await session.scalars(stmt))

    async def import_contract(self, link: BrokerLink, contract: Contract) -> bool:
        """Store a contract the broker reports but we do not know (bought elsewhere, or
        bought here while the database was failing). False when it is already stored.
        """
        async with self.ctx.db.session() as session:
            exists = await session.scalar(
                select(BrokerContract.id).where(
                    BrokerContract.link_id == link.id,
                    BrokerContract.contract_ref == contract.contract_id,
                )
            )
        if exists is not None:
            return False
        duration, unit = 0, "s"
        if contract.purchase_time and contract.expiry_time:
            seconds = int((contract.expiry_time - contract.purchase_time).total_seconds())
            duration, unit = max(seconds, 0), "s"
        try:
            await self._store_bought(link, contract, contract.buy_price, duration, unit)
        except IntegrityError:
            return False  # a concurrent sync stored it first
        return True


__all__ = ["TradingService"]
