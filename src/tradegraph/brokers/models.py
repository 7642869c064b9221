"""Broker tables: links (with vault-encrypted credentials), pending link states, stored
contracts and portfolio snapshots, and the gatekeeper's per-user access review.

Secrets live only in ``*_enc`` columns as vault tokens (``v1.<kid>.<nonce>.<ct>``) whose
associated data is ``<table>:<row id>:<column>``, so a dump is useless without the keyring
and a ciphertext copied to another row does not decrypt. Money is integer minor units
with the row's ``decimals`` beside it, as everywhere else.
"""

from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import ForeignKey, Index, String, Text, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column

from tradegraph.db import Base, new_id, str_enum, utcnow
from tradegraph.identity.models import AccessLevel


class LinkStatus(enum.StrEnum):
    """ACTIVE works; EXPIRED needs a new login; REVOKED was unlinked; ERROR was refused."""

    ACTIVE = "ACTIVE"
    EXPIRED = "EXPIRED"
    REVOKED = "REVOKED"
    ERROR = "ERROR"


class LinkMethod(enum.StrEnum):
    OAUTH = "OAUTH"
    API_KEY = "API_KEY"


class ContractState(enum.StrEnum):
    OPEN = "OPEN"
    WON = "WON"
    LOST = "LOST"
    SOLD = "SOLD"


class BrokerLink(Base):
    """One linked broker account of one user."""

    __tablename__ = "broker_links"
    __table_args__ = (
        UniqueConstraint("user_id", "provider", "account_ref"),
        # One real account is actively linked to one user only (see LinkingService).
        Index(
            "uq_broker_links_active_account",
            "provider",
            "account_ref",
            unique=True,
            sqlite_where=text("status = 'ACTIVE'"),
            postgresql_where=text("status = 'ACTIVE'"),
        ),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    provider: Mapped[str] = mapped_column(String(16))
    method: Mapped[LinkMethod] = mapped_column(str_enum(LinkMethod, "broker_link_method"))
    status: Mapped[LinkStatus] = mapped_column(
        str_enum(LinkStatus, "broker_link_status"), default=LinkStatus.ACTIVE
    )
    account_ref: Mapped[str] = mapped_column(String(64))
    currency: Mapped[str | None] = mapped_column(String(12))
    scopes: Mapped[str] = mapped_column(String(255), default="")
    credentials_enc: Mapped[str | None] = mapped_column(Text)
    meta: Mapped[str] = mapped_column(Text, default="{}")
    status_reason: Mapped[str | None] = mapped_column(String(255))
    expires_at: Mapped[datetime | None]
    linked_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_checked_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    @property
    def scope_list(self) -> list[str]:
        return [s for s in self.scopes.split(",") if s]


class BrokerLinkState(Base):
    """A pending OAuth login: the ``state`` is stored hashed, the PKCE verifier encrypted."""

    __tablename__ = "broker_link_states"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    provider: Mapped[str] = mapped_column(String(16))
    state_hash: Mapped[str] = mapped_column(String(64), unique=True)
    redirect_uri: Mapped[str] = mapped_column(String(2048))
    code_verifier_enc: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]
    used_at: Mapped[datetime | None]


class BrokerContract(Base):
    """A contract bought through TradeGraph (Deriv Rise/Fall), kept for audit and P/L."""

    __tablename__ = "broker_contracts"
    __table_args__ = (UniqueConstraint("link_id", "contract_ref"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    link_id: Mapped[str] = mapped_column(
        ForeignKey("broker_links.id", ondelete="CASCADE"), index=True
    )
    provider: Mapped[str] = mapped_column(String(16))
    contract_ref: Mapped[str] = mapped_column(String(32))
    symbol: Mapped[str] = mapped_column(String(32))
    direction: Mapped[str] = mapped_column(String(8))
    status: Mapped[ContractState] = mapped_column(
        str_enum(ContractState, "broker_contract_status"), default=ContractState.OPEN
    )
    currency: Mapped[str] = mapped_column(String(12))
    decimals: Mapped[int]
    stake: Mapped[int]
    buy_price: Mapped[int]
    payout: Mapped[int]
    sell_price: Mapped[int | None]
    profit: Mapped[int | None]
    duration: Mapped[int]
    duration_unit: Mapped[str] = mapped_column(String(1))
    buy_transaction_ref: Mapped[str | None] = mapped_column(String(32))
    sell_transaction_ref: Mapped[str | None] = mapped_column(String(32))
    description: Mapped[str | None] = mapped_column(String(512))
    purchased_at: Mapped[datetime]
    expires_at: Mapped[datetime | None]
    closed_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class BrokerPosition(Base):
    """One portfolio line as the broker last reported it (replaced on every refresh)."""

    __tablename__ = "broker_positions"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    link_id: Mapped[str] = mapped_column(
        ForeignKey("broker_links.id", ondelete="CASCADE"), index=True
    )
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    symbol: Mapped[str] = mapped_column(String(64))
    side: Mapped[str] = mapped_column(String(8))
    kind: Mapped[str] = mapped_column(String(16))
    decimals: Mapped[int]
    quantity: Mapped[int]
    average_price: Mapped[int | None]
    mark_price: Mapped[int | None]
    market_value: Mapped[int | None]
    unrealized_pnl: Mapped[int | None]
    currency: Mapped[str | None] = mapped_column(String(12))
    position_ref: Mapped[str | None] = mapped_column(String(64))
    as_of: Mapped[datetime] = mapped_column(default=utcnow)


class BrokerBalance(Base):
    """The last balance/equity snapshot of a link, shown (marked stale) when it is down."""

    __tablename__ = "broker_balances"

    link_id: Mapped[str] = mapped_column(
        ForeignKey("broker_links.id", ondelete="CASCADE"), primary_key=True
    )
    currency: Mapped[str] = mapped_column(String(12))
    decimals: Mapped[int]
    balance: Mapped[int]
    equity: Mapped[int]
    unrealized_pnl: Mapped[int]
    open_positions: Mapped[int]
    as_of: Mapped[datetime] = mapped_column(default=utcnow)


class AccessReview(Base):
    """The gatekeeper's state for one user: last decision, schedule, admin override."""

    __tablename__ = "access_reviews"

    user_id: Mapped[str] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    level: Mapped[AccessLevel | None] = mapped_column(str_enum(AccessLevel, "access_review_level"))
    reason: Mapped[str | None] = mapped_column(String(255))
    next_step: Mapped[str | None] = mapped_column(String(512))
    checks: Mapped[str] = mapped_column(Text, default="[]")
    override_level: Mapped[AccessLevel | None] = mapped_column(
        str_enum(AccessLevel, "access_override_level")
    )
    override_reason: Mapped[str | None] = mapped_column(String(255))
    override_by: Mapped[str | None] = mapped_column(String(32))
    override_at: Mapped[datetime | None]
    admin_audit_seq: Mapped[int] = mapped_column(default=0)
    last_checked_at: Mapped[datetime | None]
    next_check_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    failures: Mapped[int] = mapped_column(default=0)
    last_error: Mapped[str | None] = mapped_column(String(255))
