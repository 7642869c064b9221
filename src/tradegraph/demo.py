"""Demo data for ``make run``: users, reference data, funded accounts, a market maker."""

from __future__ import annotations

from decimal import Decimal

from sqlalchemy import select

from tradegraph.db import utcnow
from tradegraph.exchange import models as em
from tradegraph.exchange.reference import ensure_reference
from tradegraph.identity.models import AccessLevel, User
from tradegraph.identity.principal import Principal
from tradegraph.services import Services

MARKET_MAKER_EMAIL = "market-maker@tradegraph.dev"
MARKET_MAKER_PASSWORD = "market-maker-password-123"  # demo-only account


async def _user(services: Services, email: str, password: str, name: str) -> User:
    existing = await services.identity.get_user_by_email(email)
    if existing is not None:
        return existing
    tokens = await services.identity.register(email=email, password=password, display_name=name)
    async with services.db.session() as session:
        user = await session.get(User, tokens.user.id)
        assert user is not None
        user.email_verified_at = utcnow()
        user.access_level = AccessLevel.FULL
        user.access_reason = "demo account"
        await session.commit()
    return user


def principal_for(user: User) -> Principal:
    return Principal(
        user_id=user.id, role=user.role, status=user.status, access_level=user.access_level
    )


async def spot_account(services: Services, user: User) -> em.Account:
    """The user's first SPOT account, opened if missing."""
    async with services.db.session() as session:
        account = await session.scalar(
            select(em.Account)
            .where(em.Account.owner_id == user.id, em.Account.kind == em.AccountKind.SPOT)
            .order_by(em.Account.id)
            .limit(1)
        )
    if account is None:
        account = await services.exchange.open_account(
            principal_for(user), em.AccountKind.SPOT, "Main"
        )
    return account


async def fund(
    services: Services, admin: Principal, account_id: int, amounts: dict[str, str], key: str
) -> None:
    for asset, amount in amounts.items():
        await services.exchange.admin_credit(
            admin, account_id, asset, Decimal(amount), "demo seed", f"{key}-{asset}"
        )


async def seed(
    services: Services,
    trader_email: str,
    trader_password: str,
    admin_email: str,
    admin_password: str,
) -> list[str]:
    """Idempotent: create what is missing, return one line per step."""
    lines = [f"reference data: {', '.join(await ensure_reference(services.db)) or 'present'}"]
    trader = await _user(services, trader_email, trader_password, "Demo Trader")
    lines.append(f"demo trader {trader.email}")
    admin_user = await services.identity.create_admin(
        email=admin_email, password=admin_password, display_name="Demo Admin"
    )
    admin = principal_for(admin_user)
    lines.append(f"demo admin {admin_user.email}")
    await services.start()  # the caller stops the services
    account = await spot_account(services, trader)
    await fund(
        services,
        admin,
        account.id,
        {"USD": "100000", "BTC": "1", "ETH": "10"},
        f"demo-trader-{account.id}",
    )
    lines.append(f"demo SPOT account {account.id} funded")
    bot = await _user(services, MARKET_MAKER_EMAIL, MARKET_MAKER_PASSWORD, "Market Maker")
    bot_account = await spot_account(services, bot)
    await fund(
        services,
        admin,
        bot_account.id,
        {"USD": "100000000", "BTC": "1000", "ETH": "10000", "SOL": "100000"},
        f"market-maker-{bot_account.id}",
    )
    lines.append(f"market maker account {bot_account.id} funded")
    return lines
