"""GraphQL for brokers: linking, contracts, summaries and the access gatekeeper.

Translation only: arguments in, one service call (``services.brokers``), types out.
Nothing here ever returns a credential: links expose provider, status, account,
scopes and times.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
from collections.abc import Iterable
from datetime import datetime
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import strawberry
from strawberry import relay
from strawberry.scalars import JSON

from tradegraph.brokers import models
from tradegraph.brokers.common import from_units
from tradegraph.brokers.gatekeeper import AccessDecision
from tradegraph.brokers.linking import effective_status
from tradegraph.brokers.protocol import BrokerProvider, ContractDirection
from tradegraph.brokers.summary import PortfolioSummary as PortfolioResult
from tradegraph.brokers.summary import Summary
from tradegraph.errors import DomainError, Forbidden
from tradegraph.graphql.context import Info
from tradegraph.graphql.errors import UserError, returns_payload
from tradegraph.graphql.identity import AccessLevel
from tradegraph.graphql.ids import decode_id, encode_id
from tradegraph.graphql.pagination import (
    Connection,
    build_connection,
    check_page_size,
    decode_cursor,
)
from tradegraph.identity.models import AccessLevel as AccessLevelModel
from tradegraph.identity.principal import Principal

strawberry.enum(BrokerProvider, description="An external broker TradeGraph can link to.")
BrokerLinkStatus = models.LinkStatus
strawberry.enum(
    BrokerLinkStatus,
    name="BrokerLinkStatus",
    description="ACTIVE works; EXPIRED needs a new login; REVOKED was unlinked; ERROR was "
    "refused by the broker and needs relinking.",
)
BrokerLinkMethod = models.LinkMethod
strawberry.enum(
    BrokerLinkMethod,
    name="BrokerLinkMethod",
    description="How a broker is linked: an OAuth login or an API key.",
)
strawberry.enum(
    ContractDirection, description="Deriv Rise/Fall: RISE wins if the exit spot is higher."
)
ContractStatus = models.ContractState
strawberry.enum(
    ContractStatus,
    name="ContractStatus",
    description="OPEN until it expires (WON or LOST) or is sold early (SOLD).",
)


@strawberry.enum(description="Unit of a contract's duration.")
class DurationUnit(enum.Enum):
    TICKS = "t"
    SECONDS = "s"
    MINUTES = "m"
    HOURS = "h"
    DAYS = "d"


def _known(provider: str) -> bool:
    return provider in BrokerProvider.__members__


# -- types ---------------------------------------------------------------------------------


@strawberry.type(description="Balance, equity and profit/loss of broker accounts in one currency.")
class AccountSummary:
    balance: Decimal = strawberry.field(description="Cash as the broker reports it.")
    equity: Decimal = strawberry.field(
        description="Balance plus holdings and open contracts at market plus open P/L of "
        "margin positions."
    )
    open_positions: int = strawberry.field(
        description="Portfolio lines: holdings, open positions and open contracts."
    )
    realized_pnl: Decimal = strawberry.field(
        description="Profit of contracts bought through TradeGraph that have closed."
    )
    unrealized_pnl: Decimal = strawberry.field(description="Open profit/loss right now.")
    currency: str = strawberry.field(description="Currency of every amount here.")
    as_of: datetime = strawberry.field(description="When the broker reported these numbers.")
    stale: bool = strawberry.field(
        description="True when a broker could not be reached and stored numbers are shown."
    )

    @classmethod
    def from_summary(cls, s: Summary) -> AccountSummary:
        return cls(
            balance=s.balance,
            equity=s.equity,
            open_positions=s.open_positions,
            realized_pnl=s.realized_pnl,
            unrealized_pnl=s.unrealized_pnl,
            currency=s.currency,
            as_of=s.as_of,
            stale=s.stale,
        )


@strawberry.type(description="A portfolio line as the broker last reported it.")
class BrokerPosition:
    symbol: str = strawberry.field(description="Broker symbol, e.g. NSE:INFY or BTC-USDT.")
    side: str = strawberry.field(description="LONG or SHORT (for Deriv: RISE is LONG).")
    kind: str = strawberry.field(description="HOLDING, POSITION or CONTRACT.")
    quantity: Decimal = strawberry.field(description="Size, always positive.")
    average_price: Decimal | None = strawberry.field(description="Average entry price.")
    mark_price: Decimal | None = strawberry.field(description="Last or bid price.")
    market_value: Decimal | None = strawberry.field(
        description="Value at market, for holdings and contracts."
    )
    unrealized_pnl: Decimal | None = strawberry.field(description="Open profit/loss.")
    currency: str | None = strawberry.field(description="Currency of the amounts.")
    as_of: datetime = strawberry.field(description="When the broker reported it.")

    @classmethod
    def from_model(cls, row: models.BrokerPosition) -> BrokerPosition:
        def units(value: int | None) -> Decimal | None:
            return None if value is None else from_units(value, row.decimals)

        return cls(
            symbol=row.symbol,
            side=row.side,
            kind=row.kind,
            quantity=from_units(row.quantity, row.decimals),
            average_price=units(row.average_price),
            mark_price=units(row.mark_price),
            market_value=units(row.market_value),
            unrealized_pnl=units(row.unrealized_pnl),
            currency=row.currency,
            as_of=row.as_of,
        )


@strawberry.type(description="A broker account linked to your user. Secrets are never shown.")
class BrokerLink(relay.Node):
    id: relay.NodeID[str]
    provider: BrokerProvider = strawberry.field(description="Which broker.")
    method: BrokerLinkMethod = strawberry.field(description="OAUTH login or API_KEY.")
    status: BrokerLinkStatus = strawberry.field(
        description="ACTIVE, EXPIRED, REVOKED or ERROR (EXPIRED as soon as the session ends)."
    )
    status_reason: str | None = strawberry.field(description="Why it is not ACTIVE, if so.")
    account_reference: str = strawberry.field(
        description="The broker's account id (Deriv loginid, Kite user id, BingX uid)."
    )
    currency: str | None = strawberry.field(description="The account's currency.")
    scopes: list[str] = strawberry.field(description="What the credentials may do.")
    is_virtual: bool = strawberry.field(description="True for a demo (virtual money) account.")
    linked_at: datetime = strawberry.field(description="When it was (last) linked.")
    last_checked_at: datetime | None = strawberry.field(
        description="When the credentials were last confirmed with the broker."
    )
    expires_at: datetime | None = strawberry.field(
        description="When the broker session ends (Kite: 06:00 IST the next morning)."
    )
    revoked_at: datetime | None = strawberry.field(description="When it was unlinked.")
    link: strawberry.Private[models.BrokerLink]
    # One broker refresh per object, shared by `summary` and `positions` (which graphql-core
    # resolves concurrently).
    refresh: strawberry.Private[asyncio.Task[Summary] | None] = None

    def _refreshed(self, info: Info) -> asyncio.Task[Summary]:
        if self.refresh is None:
            summaries = info.context.services.brokers.summaries
            self.refresh = asyncio.ensure_future(summaries.summary_of(self.link))
        return self.refresh

    @classmethod
    def from_model(cls, link: models.BrokerLink, now: datetime) -> BrokerLink:
        meta = json.loads(link.meta or "{}")
        return cls(
            id=link.id,
            provider=BrokerProvider(link.provider),
            method=link.method,
            status=effective_status(link, now),
            status_reason=link.status_reason,
            account_reference=link.account_ref,
            currency=link.currency,
            scopes=link.scope_list,
            is_virtual=bool(meta.get("is_virtual")),
            linked_at=link.linked_at,
            last_checked_at=link.last_checked_at,
            expires_at=link.expires_at,
            revoked_at=link.revoked_at,
            link=link,
        )

    @strawberry.field(description="Balance, equity and P/L of this account, from the broker.")
    async def summary(self, info: Info) -> AccountSummary:
        principal = info.context.require_principal()
        if principal.user_id != self.link.user_id:
            raise Forbidden("only the owner can read a broker account's summary")
        return AccountSummary.from_summary(await self._refreshed(info))

    @strawberry.field(
        description="Portfolio lines as the broker reports them (the stored ones, marked by "
        "`asOf`, when it cannot be reached)."
    )
    async def positions(self, info: Info) -> list[BrokerPosition]:
        principal = info.context.require_principal()
        if principal.user_id != self.link.user_id:
            raise Forbidden("only the owner can read a broker account's positions")
        with contextlib.suppress(DomainError):
            await self._refreshed(info)
        rows = await info.context.services.brokers.summaries.positions(self.link)
        return [BrokerPosition.from_model(r) for r in rows]

    @classmethod
    async def resolve_nodes(  # type: ignore[override]
        cls, *, info: Info, node_ids: Iterable[str], required: bool = False
    ) -> list[BrokerLink | None]:
        principal = info.context.principal
        ids = list(node_ids)
        if principal is None:
            return [None] * len(ids)
        brokers = info.context.services.brokers
        found = {
            link.id: link
            for link in await brokers.linking.get_many(principal, ids)
            if _known(link.provider)
        }
        now = brokers.clock.now()
        return [BrokerLink.from_model(found[i], now) if i in found else None for i in ids]


@strawberry.type(description="A contract bought through a linked broker (Deriv Rise/Fall).")
class BrokerContract(relay.Node):
    id: relay.NodeID[str]
    link_id: strawberry.ID = strawberry.field(description="The BrokerLink it was bought on.")
    provider: BrokerProvider = strawberry.field(description="Which broker.")
    contract_reference: str = strawberry.field(description="The broker's contract id.")
    symbol: str = strawberry.field(description="Underlying, e.g. R_100.")
    direction: ContractDirection = strawberry.field(description="RISE or FALL.")
    status: ContractStatus = strawberry.field(description="OPEN, WON, LOST or SOLD.")
    currency: str = strawberry.field(description="Currency of the amounts.")
    stake: Decimal = strawberry.field(description="Stake asked for.")
    buy_price: Decimal = strawberry.field(description="Price paid.")
    payout: Decimal = strawberry.field(description="Paid out if it wins at expiry.")
    sell_price: Decimal | None = strawberry.field(
        description="What it was sold for or paid out (0 when lost); null while open."
    )
    profit: Decimal | None = strawberry.field(description="Sell price minus buy price.")
    duration: int = strawberry.field(description="Duration in `durationUnit`s.")
    duration_unit: DurationUnit = strawberry.field(description="Unit of `duration`.")
    description: str | None = strawberry.field(description="The broker's plain-text terms.")
    purchased_at: datetime = strawberry.field(description="When it was bought.")
    expires_at: datetime | None = strawberry.field(description="When it settles.")
    closed_at: datetime | None = strawberry.field(description="When it was sold or settled.")

    @classmethod
    def from_model(cls, row: models.BrokerContract) -> BrokerContract:
        def units(value: int | None) -> Decimal | None:
            return None if value is None else from_units(value, row.decimals)

        return cls(
            id=row.id,
            link_id=strawberry.ID(encode_id("BrokerLink", row.link_id)),
            provider=BrokerProvider(row.provider),
            contract_reference=row.contract_ref,
            symbol=row.symbol,
            direction=ContractDirection(row.direction),
            status=row.status,
            currency=row.currency,
            stake=from_units(row.stake, row.decimals),
            buy_price=from_units(row.buy_price, row.decimals),
            payout=from_units(row.payout, row.decimals),
            sell_price=units(row.sell_price),
            profit=units(row.profit),
            duration=row.duration,
            duration_unit=DurationUnit(row.duration_unit),
            description=row.description,
            purchased_at=row.purchased_at,
            expires_at=row.expires_at,
            closed_at=row.closed_at,
        )

    @classmethod
    async def resolve_nodes(  # type: ignore[override]
        cls, *, info: Info, node_ids: Iterable[str], required: bool = False
    ) -> list[BrokerContract | None]:
        principal = info.context.principal
        ids = list(node_ids)
        if principal is None:
            return [None] * len(ids)
        rows = await info.context.services.brokers.trading.get_many(principal, ids)
        found = {r.id: r for r in rows}
        return [BrokerContract.from_model(found[i]) if i in found else None for i in ids]


@strawberry.type(description="One linked account's part of a portfolio summary.")
class LinkedAccountSummary:
    link: BrokerLink = strawberry.field(description="The linked account.")
    summary: AccountSummary | None = strawberry.field(
        description="In the account's own currency; null when it could not be read."
    )
    converted: AccountSummary | None = strawberry.field(
        description="Converted to the requested currency; null when it is not in the total."
    )
    error: UserError | None = strawberry.field(
        description="Why the account is missing from the total or shown stale."
    )
    included_in_total: bool = strawberry.field(
        description="False for demo accounts and accounts that could not be read."
    )


@strawberry.type(description="A conversion rate used by a summary.")
class ExchangeRate:
    currency: str = strawberry.field(description="Currency code.")
    usd_per_unit: Decimal = strawberry.field(description="US dollars per one unit of it.")


@strawberry.type(description="All linked broker accounts totalled in one currency.")
class PortfolioSummary(AccountSummary):
    accounts: list[LinkedAccountSummary] = strawberry.field(
        description="Each linked account, in its own and in the requested currency."
    )
    rates: list[ExchangeRate] = strawberry.field(
        description="The configured rates used for the conversion."
    )

    @classmethod
    def from_result(cls, result: PortfolioResult, now: datetime) -> PortfolioSummary:
        total = result.total
        return cls(
            balance=total.balance,
            equity=total.equity,
            open_positions=total.open_positions,
            realized_pnl=total.realized_pnl,
            unrealized_pnl=total.unrealized_pnl,
            currency=total.currency,
            as_of=total.as_of,
            stale=total.stale,
            accounts=[
                LinkedAccountSummary(
                    link=BrokerLink.from_model(a.link, now),
                    summary=AccountSummary.from_summary(a.summary) if a.summary else None,
                    converted=AccountSummary.from_summary(a.converted) if a.converted else None,
                    error=(
                        UserError(code=a.error_code, field=None, message=a.error or "")
                        if a.error_code
                        else None
                    ),
                    included_in_total=a.in_total,
                )
                for a in result.accounts
                if _known(a.link.provider)
            ],
            rates=[ExchangeRate(currency=c, usd_per_unit=r) for c, r in result.rates.items()],
        )


async def portfolio_summary(info: Info, user_id: str, currency: str) -> PortfolioSummary | None:
    """``User.summary``: only for the user themselves (null for anyone else)."""
    principal = info.context.principal
    if principal is None or principal.user_id != user_id:
        return None
    brokers = info.context.services.brokers
    result = await brokers.summaries.portfolio(principal, currency)
    return PortfolioSummary.from_result(result, brokers.clock.now())


@strawberry.type(description="A broker TradeGraph can link and how.")
class BrokerProviderInfo:
    provider: BrokerProvider = strawberry.field(description="Which broker.")
    method: BrokerLinkMethod = strawberry.field(
        description="OAUTH: startBrokerLink + completeBrokerLink; API_KEY: linkBrokerApiKey."
    )
    configured: bool = strawberry.field(description="Whether this server can link it now.")
    sandbox: bool = strawberry.field(description="True when it is the local fake (sandbox).")


@strawberry.type(description="One check of the access policy.")
class AccessCheck:
    name: str = strawberry.field(description="bingx_linked, referral or deposits.")
    passed: bool = strawberry.field(description="Whether it passed.")
    detail: str = strawberry.field(description="What was found.")


@strawberry.type(description="Your access level, why, and what to do next.")
class AccessStatus:
    level: AccessLevel = strawberry.field(description="LIMITED or FULL.")
    reason: str | None = strawberry.field(description="Why the level is what it is.")
    next_step: str | None = strawberry.field(description="What to do to get FULL access.")
    checks: list[AccessCheck] = strawberry.field(description="The checks of the last review.")
    overridden: bool = strawberry.field(description="True when an administrator set the level.")
    last_checked_at: datetime | None = strawberry.field(description="When it was last reviewed.")
    next_check_at: datetime | None = strawberry.field(description="When it is reviewed next.")


def _status(
    row: models.AccessReview | None, level: AccessLevelModel, reason: str | None
) -> AccessStatus:
    if row is None:
        return AccessStatus(
            level=level,
            reason=reason,
            next_step=None,
            checks=[],
            overridden=False,
            last_checked_at=None,
            next_check_at=None,
        )
    return AccessStatus(
        level=level,
        reason=row.reason or reason,
        next_step=row.next_step,
        checks=[AccessCheck(**c) for c in json.loads(row.checks or "[]")],
        overridden=row.override_level is not None,
        last_checked_at=row.last_checked_at,
        next_check_at=row.next_check_at,
    )


async def _access_status(info: Info, user_id: str) -> AccessStatus:
    services = info.context.services
    user = await services.identity.get_user(user_id)
    if user is None:
        raise DomainError("user not found", code="NOT_FOUND", field="userId")
    row = await services.brokers.gatekeeper.current(user_id)
    return _status(row, user.access_level, user.access_reason)


def _with_decision(status: AccessStatus, decision: AccessDecision) -> AccessStatus:
    if decision.checks:
        status.checks = [
            AccessCheck(name=c.name, passed=c.passed, detail=c.detail) for c in decision.checks
        ]
    return status


# -- payloads and inputs -------------------------------------------------------------------


@strawberry.type(description="The result of startBrokerLink.")
class StartBrokerLinkPayload:
    authorization_url: str | None = strawberry.field(
        default=None, description="Send the user here to log in at the broker."
    )
    state: str | None = strawberry.field(
        default=None,
        description="Pass back to completeBrokerLink; single use, yours only, 10 minutes.",
    )
    expires_at: datetime | None = strawberry.field(
        default=None, description="When `state` stops working."
    )
    errors: list[UserError] = strawberry.field(default_factory=list, description="Failures.")


@strawberry.type(description="The result of a mutation that links broker accounts.")
class BrokerLinkPayload:
    link: BrokerLink | None = strawberry.field(default=None, description="The (first) link.")
    links: list[BrokerLink] = strawberry.field(
        default_factory=list, description="Every account linked (Deriv may return several)."
    )
    errors: list[UserError] = strawberry.field(default_factory=list, description="Failures.")


@strawberry.type(description="The result of unlinkBroker.")
class UnlinkBrokerPayload:
    link: BrokerLink | None = strawberry.field(default=None, description="The revoked link.")
    errors: list[UserError] = strawberry.field(default_factory=list, description="Failures.")


@strawberry.type(description="The result of buyContract and sellContract.")
class ContractPayload:
    contract: BrokerContract | None = strawberry.field(default=None, description="The contract.")
    errors: list[UserError] = strawberry.field(default_factory=list, description="Failures.")


@strawberry.type(description="The result of an access review or override.")
class AccessStatusPayload:
    access: AccessStatus | None = strawberry.field(default=None, description="The new status.")
    errors: list[UserError] = strawberry.field(default_factory=list, description="Failures.")


@strawberry.input(description="Start an OAuth login at a broker.")
class StartBrokerLinkInput:
    provider: BrokerProvider = strawberry.field(description="DERIV or ZERODHA (OAuth brokers).")
    redirect_uri: str = strawberry.field(
        description="Where your frontend receives the broker's redirect; must be allowlisted."
    )


@strawberry.input(description="Finish a broker login with what the broker redirected back.")
class CompleteBrokerLinkInput:
    state: str = strawberry.field(description="The state startBrokerLink returned.")
    params: JSON | None = strawberry.field(
        default=None,
        description="The redirect's query parameters as an object, e.g. "
        '{"acct1": "...", "token1": "...", "cur1": "usd"} or {"request_token": "..."}.',
    )
    callback_url: str | None = strawberry.field(
        default=None, description="Or: the whole URL the broker redirected to."
    )


@strawberry.input(description="Link a broker with an API key and secret (BingX).")
class LinkBrokerApiKeyInput:
    provider: BrokerProvider = strawberry.field(description="BINGX.")
    api_key: str = strawberry.field(description="The API key.")
    api_secret: str = strawberry.field(description="The API secret; stored encrypted only.")


@strawberry.input(description="Unlink a broker account.")
class UnlinkBrokerInput:
    link_id: strawberry.ID = strawberry.field(description="The BrokerLink to revoke.")


@strawberry.input(description="Buy a Deriv Rise/Fall contract.")
class BuyContractInput:
    link_id: strawberry.ID = strawberry.field(description="An ACTIVE Deriv BrokerLink.")
    symbol: str = strawberry.field(description="Underlying, e.g. R_100.")
    direction: ContractDirection = strawberry.field(description="RISE or FALL.")
    stake: Decimal = strawberry.field(description="Amount to pay, in the account currency.")
    duration: int = strawberry.field(description="How long the contract runs.")
    duration_unit: DurationUnit = strawberry.field(description="Unit of `duration`.")
    max_price: Decimal | None = strawberry.field(
        default=None, description="Refuse if the price moved above this (default: the quote)."
    )


@strawberry.input(description="Sell an open contract before expiry.")
class SellContractInput:
    contract_id: strawberry.ID = strawberry.field(description="The BrokerContract to sell.")
    min_price: Decimal | None = strawberry.field(
        default=None, description="Refuse to sell below this (default: sell at market)."
    )


def _callback_params(input: CompleteBrokerLinkInput) -> dict[str, Any]:
    if input.params is not None and input.callback_url is not None:
        raise DomainError("give params or callbackUrl, not both", field="params")
    if input.params is not None:
        if not isinstance(input.params, dict):
            raise DomainError("params must be an object", field="params")
        return dict(input.params)
    if input.callback_url is not None:
        query = urlsplit(input.callback_url).query
        return dict(parse_qsl(query, keep_blank_values=True))
    raise DomainError("give the redirect's params or its callbackUrl", field="params")


def _ip(info: Info) -> str:
    return info.context.ip


def _admin(info: Info) -> Principal:
    principal = info.context.require_principal()
    if not principal.is_admin:
        raise Forbidden("this needs the ADMIN role (and a password session, not an API token)")
    return principal


# -- roots ---------------------------------------------------------------------------------


@strawberry.type
class BrokerQuery:
    @strawberry.field(description="Your linked broker accounts, newest first (no secrets).")
    async def broker_links(self, info: Info, include_revoked: bool = False) -> list[BrokerLink]:
        principal = info.context.require_principal()
        brokers = info.context.services.brokers
        rows = await brokers.linking.list_links(principal, include_revoked=include_revoked)
        now = brokers.clock.now()
        return [BrokerLink.from_model(r, now) for r in rows if _known(r.provider)]

    @strawberry.field(description="Contracts bought through your links, newest first.")
    async def broker_contracts(
        self,
        info: Info,
        link_id: strawberry.ID | None = None,
        open_only: bool = False,
        first: int = 50,
        after: str | None = None,
    ) -> Connection[BrokerContract]:
        principal = info.context.require_principal()
        check_page_size(first, info.context.settings.max_page_size)
        key = decode_cursor(after, size=2)
        rows = await info.context.services.brokers.trading.list_contracts(
            principal,
            link_id=decode_id(link_id, "BrokerLink", field="linkId") if link_id else None,
            open_only=open_only,
            limit=first + 1,
            after=(datetime.fromisoformat(key[0]), str(key[1])) if key else None,
        )
        return build_connection(
            rows, first, lambda r: (r.purchased_at.isoformat(), r.id), BrokerContract.from_model
        )

    @strawberry.field(description="The brokers this server can link, and how.")
    def broker_providers(self, info: Info) -> list[BrokerProviderInfo]:
        return [
            BrokerProviderInfo(
                provider=BrokerProvider(p.provider),
                method=p.method,
                configured=p.configured,
                sandbox=p.sandbox,
            )
            for p in info.context.services.brokers.linking.providers()
        ]

    @strawberry.field(description="The redirectUri values startBrokerLink accepts.")
    def broker_redirect_uris(self, info: Info) -> list[str]:
        info.context.require_principal()
        return info.context.services.brokers.linking.allowed_redirect_uris()

    @strawberry.field(description="Your access level with its checks and next step.")
    async def access_status(self, info: Info) -> AccessStatus:
        principal = info.context.require_principal()
        return await _access_status(info, principal.user_id)


@strawberry.type
class BrokerMutation:
    @strawberry.mutation(
        description="Start linking an OAuth broker: returns the login URL and a single-use "
        "state (bound to you, 10 minutes)."
    )
    @returns_payload(StartBrokerLinkPayload)
    async def start_broker_link(
        self, info: Info, input: StartBrokerLinkInput
    ) -> StartBrokerLinkPayload:
        principal = info.context.require_principal()
        started = await info.context.services.brokers.linking.start(
            principal, input.provider.value, input.redirect_uri, ip=_ip(info)
        )
        return StartBrokerLinkPayload(
            authorization_url=started.authorization_url,
            state=started.state,
            expires_at=started.expires_at,
        )

    @strawberry.mutation(
        description="Finish a broker login: validates what the broker sent and links the "
        "account(s)."
    )
    @returns_payload(BrokerLinkPayload)
    async def complete_broker_link(
        self, info: Info, input: CompleteBrokerLinkInput
    ) -> BrokerLinkPayload:
        principal = info.context.require_principal()
        brokers = info.context.services.brokers
        links = await brokers.linking.complete(
            principal, input.state, _callback_params(input), ip=_ip(info)
        )
        now = brokers.clock.now()
        out = [BrokerLink.from_model(link, now) for link in links if _known(link.provider)]
        return BrokerLinkPayload(link=out[0] if out else None, links=out)

    @strawberry.mutation(
        description="Link a broker with an API key and secret (BingX); checked with a signed "
        "call before anything is stored."
    )
    @returns_payload(BrokerLinkPayload)
    async def link_broker_api_key(
        self, info: Info, input: LinkBrokerApiKeyInput
    ) -> BrokerLinkPayload:
        principal = info.context.require_principal()
        brokers = info.context.services.brokers
        link = await brokers.linking.link_api_key(
            principal, input.provider.value, input.api_key, input.api_secret, ip=_ip(info)
        )
        out = BrokerLink.from_model(link, brokers.clock.now())
        return BrokerLinkPayload(link=out, links=[out])

    @strawberry.mutation(description="Unlink a broker account; its credentials are erased.")
    @returns_payload(UnlinkBrokerPayload)
    async def unlink_broker(self, info: Info, input: UnlinkBrokerInput) -> UnlinkBrokerPayload:
        principal = info.context.require_principal()
        brokers = info.context.services.brokers
        link = await brokers.linking.unlink(
            principal, decode_id(input.link_id, "BrokerLink", field="linkId"), ip=_ip(info)
        )
        return UnlinkBrokerPayload(link=BrokerLink.from_model(link, brokers.clock.now()))

    @strawberry.mutation(description="Re-validate a link's credentials with the broker now.")
    @returns_payload(BrokerLinkPayload)
    async def check_broker_link(self, info: Info, link_id: strawberry.ID) -> BrokerLinkPayload:
        principal = info.context.require_principal()
        brokers = info.context.services.brokers
        link = await brokers.linking.check(
            principal, decode_id(link_id, "BrokerLink", field="linkId"), ip=_ip(info)
        )
        out = BrokerLink.from_model(link, brokers.clock.now())
        return BrokerLinkPayload(link=out, links=[out])

    @strawberry.mutation(description="Buy a Deriv Rise/Fall contract on a linked account.")
    @returns_payload(ContractPayload)
    async def buy_contract(self, info: Info, input: BuyContractInput) -> ContractPayload:
        principal = info.context.require_principal()
        row = await info.context.services.brokers.trading.buy_contract(
            principal,
            decode_id(input.link_id, "BrokerLink", field="linkId"),
            symbol=input.symbol,
            direction=input.direction,
            stake=input.stake,
            duration=input.duration,
            duration_unit=input.duration_unit.value,
            max_price=input.max_price,
            ip=_ip(info),
        )
        return ContractPayload(contract=BrokerContract.from_model(row))

    @strawberry.mutation(description="Sell an open Deriv contract before it expires.")
    @returns_payload(ContractPayload)
    async def sell_contract(self, info: Info, input: SellContractInput) -> ContractPayload:
        principal = info.context.require_principal()
        row = await info.context.services.brokers.trading.sell_contract(
            principal,
            decode_id(input.contract_id, "BrokerContract", field="contractId"),
            min_price=input.min_price,
            ip=_ip(info),
        )
        return ContractPayload(contract=BrokerContract.from_model(row))

    @strawberry.mutation(description="Re-check your access level now (it is also checked daily).")
    @returns_payload(AccessStatusPayload)
    async def revalidate_access(self, info: Info) -> AccessStatusPayload:
        principal = info.context.require_principal()
        decision = await info.context.services.brokers.gatekeeper.review_self(
            principal, ip=_ip(info)
        )
        status = await _access_status(info, principal.user_id)
        return AccessStatusPayload(access=_with_decision(status, decision))

    @strawberry.mutation(description="Re-check a user's access level now (ADMIN only).")
    @returns_payload(AccessStatusPayload)
    async def admin_revalidate_access(
        self, info: Info, user_id: strawberry.ID
    ) -> AccessStatusPayload:
        admin = _admin(info)
        raw = decode_id(user_id, "User", field="userId")
        decision = await info.context.services.brokers.gatekeeper.admin_review(
            admin, raw, ip=_ip(info)
        )
        status = await _access_status(info, raw)
        return AccessStatusPayload(access=_with_decision(status, decision))

    @strawberry.mutation(
        description="Pin a user's access level over the gatekeeper, or pass null to hand "
        "them back to the policy (ADMIN only)."
    )
    @returns_payload(AccessStatusPayload)
    async def admin_set_access_override(
        self,
        info: Info,
        user_id: strawberry.ID,
        access_level: AccessLevel | None = None,
        reason: str | None = None,
    ) -> AccessStatusPayload:
        admin = _admin(info)
        raw = decode_id(user_id, "User", field="userId")
        decision = await info.context.services.brokers.gatekeeper.set_override(
            admin,
            raw,
            AccessLevelModel(access_level) if access_level is not None else None,
            reason,
            ip=_ip(info),
        )
        status = await _access_status(info, raw)
        return AccessStatusPayload(access=_with_decision(status, decision))


__all__ = ["BrokerMutation", "BrokerQuery", "PortfolioSummary", "portfolio_summary"]
