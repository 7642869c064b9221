"""Demo data for ``make run``: a trader and an admin (each domain adds its own seed)."""

from __future__ import annotations

from sqlalchemy import select

from tradegraph.db import utcnow
from tradegraph.identity.models import AccessLevel, User
from tradegraph.services import Services


async def seed(
    services: Services,
    trader_email: str,
    trader_password: str,
    admin_email: str,
    admin_password: str,
) -> list[str]:
    """Create the demo accounts if missing; return what was done, one line each."""
    lines: list[str] = []
    async with services.db.session() as session:
        trader = await session.scalar(select(User).where(User.email == trader_email))
    if trader is None:
        tokens = await services.identity.register(
            email=trader_email, password=trader_password, display_name="Demo Trader"
        )
        async with services.db.session() as session:
            user = await session.get(User, tokens.user.id)
            assert user is not None
            user.email_verified_at = utcnow()
            user.access_level = AccessLevel.FULL
            user.access_reason = "demo account"
            await session.commit()
        lines.append(f"created demo trader {trader_email}")
    else:
        lines.append(f"demo trader {trader_email} exists")
    admin = await services.identity.create_admin(
        email=admin_email, password=admin_password, display_name="Demo Admin"
    )
    lines.append(f"demo admin {admin.email} ready")
    return lines
