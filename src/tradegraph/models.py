"""Imports every table so ``Base.metadata`` is complete (migrations, tests)."""

from tradegraph.audit.models import AuditEntry
from tradegraph.db import Base
from tradegraph.exchange.models import (
    Account,
    Asset,
    Balance,
    EngineCommand,
    EngineState,
    Instrument,
    LedgerEntry,
    Order,
    Trade,
    Transaction,
)
from tradegraph.identity.models import ApiToken, EmailToken, OutboxEmail, RefreshToken, User
from tradegraph.notifications.models import Notification

__all__ = [
    "Account",
    "ApiToken",
    "Asset",
    "AuditEntry",
    "Balance",
    "Base",
    "EmailToken",
    "EngineCommand",
    "EngineState",
    "Instrument",
    "LedgerEntry",
    "Notification",
    "Order",
    "OutboxEmail",
    "RefreshToken",
    "Trade",
    "Transaction",
    "User",
]
