"""Exchange tables. The sequencer is their only writer; API workers only read them.

Money and quantities are ``BigInteger`` minor units (asset decimals) or price/qty units
(instrument decimals); the engine's integer ids are the primary keys of orders and trades.
"""

from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import (
    BigInteger,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    func,
)
from sqlalchemy.orm import Mapped, mapped_column

from tradegraph.db import Base, str_enum, utcnow
from tradegraph.exchange.book import (
    InstrumentStatus,
    OrderStatus,
    OrderType,
    PostingReason,
    Side,
    STPMode,
    TimeInForce,
)

# The time of the sequencer's rows. Its PostgreSQL writes leave them out and the server
# fills in ``now()``: the batch transaction's start, one time for a whole batch, as the
# sequencer's own clock would give. Encoding two timestamps per order row for binary COPY
# was about a third of the engine's commit CPU per order (docs/BENCHMARKS.md). On SQLite
# the sequencer still sends its own time.
BATCH_TIME = func.now()


class AccountKind(enum.StrEnum):
    SPOT = "SPOT"
    PAPER = "PAPER"
    CHALLENGE = "CHALLENGE"
    FUNDED = "FUNDED"
    BROKER = "BROKER"
    SYSTEM = "SYSTEM"


class AccountStatus(enum.StrEnum):
    ACTIVE = "ACTIVE"
    FROZEN = "FROZEN"
    CLOSED = "CLOSED"


class Venue(enum.StrEnum):
    CLOB = "CLOB"
    SIM = "SIM"


class TransactionKind(enum.StrEnum):
    DEPOSIT = "DEPOSIT"
    WITHDRAWAL = "WITHDRAWAL"
    CREDIT = "CREDIT"


class TransactionStatus(enum.StrEnum):
    COMPLETED = "COMPLETED"
    REJECTED = "REJECTED"


class Asset(Base):
    __tablename__ = "assets"

    code: Mapped[str] = mapped_column(String(12), primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    decimals: Mapped[int] = mapped_column()


class Instrument(Base):
    __tablename__ = "instruments"

    symbol: Mapped[str] = mapped_column(String(24), primary_key=True)
    base_asset: Mapped[str] = mapped_column(ForeignKey("assets.code"))
    quote_asset: Mapped[str] = mapped_column(ForeignKey("assets.code"))
    venue: Mapped[Venue] = mapped_column(str_enum(Venue, "venue", 24), default=Venue.CLOB)
    price_decimals: Mapped[int] = mapped_column()
    qty_decimals: Mapped[int] = mapped_column()
    tick: Mapped[int] = mapped_column(default=1)
    lot: Mapped[int] = mapped_column(default=1)
    min_qty: Mapped[int] = mapped_column(default=0)
    min_notional: Mapped[int] = mapped_column(default=0)
    maker_fee_bps: Mapped[int] = mapped_column(default=0)
    taker_fee_bps: Mapped[int] = mapped_column(default=0)
    status: Mapped[InstrumentStatus] = mapped_column(
        str_enum(InstrumentStatus, "instrument_status", 24), default=InstrumentStatus.TRADING
    )
    last_price: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Account(Base):
    __tablename__ = "accounts"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    owner_id: Mapped[str | None] = mapped_column(
        ForeignKey("users.id", ondelete="RESTRICT"), index=True
    )
    kind: Mapped[AccountKind] = mapped_column(str_enum(AccountKind, "account_kind", 24))
    status: Mapped[AccountStatus] = mapped_column(
        str_enum(AccountStatus, "account_status", 24), default=AccountStatus.ACTIVE
    )
    name: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Balance(Base):
    __tablename__ = "balances"

    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), primary_key=True)
    asset: Mapped[str] = mapped_column(ForeignKey("assets.code"), primary_key=True)
    total: Mapped[int] = mapped_column(default=0)
    locked: Mapped[int] = mapped_column(default=0)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, server_default=BATCH_TIME)


class Order(Base):
    __tablename__ = "orders"
    __table_args__ = (
        UniqueConstraint("account_id", "client_order_id"),
        Index("ix_orders_account_created", "account_id", "id"),
        Index("ix_orders_open", "status", "priority"),
    )

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    # No foreign keys on orders and trades (as on ledger_entries): the sequencer, their
    # only writer, checks accounts and instruments in memory, and PostgreSQL's per-row
    # check was half the cost of inserting an order (migration 0006).
    account_id: Mapped[int] = mapped_column()
    # Not indexed alone: every order query is scoped to the caller's accounts, which
    # ix_orders_account_created narrows; the index cost ~20% of PostgreSQL's work per
    # inserted order (migration 0007).
    symbol: Mapped[str] = mapped_column(String(24))
    side: Mapped[Side] = mapped_column(str_enum(Side, "side", 8))
    type: Mapped[OrderType] = mapped_column(str_enum(OrderType, "order_type", 24))
    time_in_force: Mapped[TimeInForce] = mapped_column(str_enum(TimeInForce, "time_in_force", 8))
    status: Mapped[OrderStatus] = mapped_column(str_enum(OrderStatus, "order_status", 24))
    price: Mapped[int | None] = mapped_column(BigInteger)
    stop_price: Mapped[int | None] = mapped_column(BigInteger)
    quantity: Mapped[int | None] = mapped_column(BigInteger)
    quote_quantity: Mapped[int | None] = mapped_column(BigInteger)
    post_only: Mapped[bool] = mapped_column(default=False)
    stp: Mapped[STPMode] = mapped_column(str_enum(STPMode, "stp_mode", 24))
    client_order_id: Mapped[str | None] = mapped_column(String(36))
    filled_qty: Mapped[int] = mapped_column(default=0)
    remaining_qty: Mapped[int] = mapped_column(default=0)
    quote_filled: Mapped[int] = mapped_column(default=0)
    fee_paid: Mapped[int] = mapped_column(default=0)
    fee_accrued: Mapped[int] = mapped_column(default=0)
    reserved: Mapped[int] = mapped_column(default=0)
    budget_left: Mapped[int] = mapped_column(default=0)
    limit_price: Mapped[int] = mapped_column(default=0)
    priority: Mapped[int] = mapped_column(default=0)
    triggered: Mapped[bool] = mapped_column(default=False)
    reason: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow, server_default=BATCH_TIME)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, server_default=BATCH_TIME)


class Trade(Base):
    __tablename__ = "trades"
    __table_args__ = (Index("ix_trades_symbol_id", "symbol", "id"),)

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    symbol: Mapped[str] = mapped_column(String(24))  # no foreign key: see Order
    seq: Mapped[int] = mapped_column()
    price: Mapped[int] = mapped_column()
    qty: Mapped[int] = mapped_column()
    notional: Mapped[int] = mapped_column()
    taker_side: Mapped[Side] = mapped_column(str_enum(Side, "side", 8))
    taker_order_id: Mapped[int] = mapped_column(index=True)
    maker_order_id: Mapped[int] = mapped_column(index=True)
    taker_account_id: Mapped[int] = mapped_column(index=True)
    maker_account_id: Mapped[int] = mapped_column(index=True)
    taker_fee: Mapped[int] = mapped_column()
    maker_fee: Mapped[int] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(
        default=utcnow, server_default=BATCH_TIME, index=True
    )


class LedgerEntry(Base):
    """One double-entry line: ``amount`` of ``asset`` from one account to another.

    ``None`` on either side is the outside world (deposits, withdrawals, credits).
    """

    __tablename__ = "ledger_entries"

    # INTEGER on SQLite: only an INTEGER PRIMARY KEY autoincrements there.
    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    from_account_id: Mapped[int | None] = mapped_column(index=True)
    to_account_id: Mapped[int | None] = mapped_column(index=True)
    asset: Mapped[str] = mapped_column(String(12))
    amount: Mapped[int] = mapped_column()
    reason: Mapped[PostingReason] = mapped_column(str_enum(PostingReason, "posting_reason", 24))
    order_id: Mapped[int | None] = mapped_column(BigInteger)
    trade_id: Mapped[int | None] = mapped_column(BigInteger)
    ref: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow, server_default=BATCH_TIME)


class Transaction(Base):
    """A deposit, withdrawal or admin credit as the user sees it."""

    __tablename__ = "transactions"
    __table_args__ = (
        UniqueConstraint("account_id", "idempotency_key"),
        Index("ix_transactions_account_id", "account_id", "id"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"))
    kind: Mapped[TransactionKind] = mapped_column(str_enum(TransactionKind, "transaction_kind", 24))
    status: Mapped[TransactionStatus] = mapped_column(
        str_enum(TransactionStatus, "transaction_status", 24)
    )
    asset: Mapped[str] = mapped_column(String(12))
    amount: Mapped[int] = mapped_column()
    idempotency_key: Mapped[str | None] = mapped_column(String(64))
    params_hash: Mapped[str] = mapped_column(String(64))
    reference: Mapped[str | None] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class EngineCommand(Base):
    """Each committed command's result, so a redelivered command is answered, not redone."""

    __tablename__ = "engine_commands"

    command_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    result: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(
        default=utcnow, server_default=BATCH_TIME, index=True
    )


class EngineState(Base):
    """Counters the engine restores on rebuild (next ids, per-topic sequences)."""

    __tablename__ = "engine_state"

    key: Mapped[str] = mapped_column(String(96), primary_key=True)
    value: Mapped[int] = mapped_column()
