"""Imports every table so ``Base.metadata`` is complete (migrations, tests)."""

from tradegraph.audit.models import AuditEntry
from tradegraph.brokers.models import (
    AccessReview,
    BrokerBalance,
    BrokerContract,
    BrokerLink,
    BrokerLinkState,
    BrokerPosition,
)
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
from tradegraph.marketdata.models import Candle
from tradegraph.notifications.models import Notification

__all__ = [
    "AccessReview",
    "Account",
    "ApiToken",
    "Asset",
    "AuditEntry",
    "Balance",
    "Base",
    "BrokerBalance",
    "BrokerContract",
    "BrokerLink",
    "BrokerLinkState",
    "BrokerPosition",
    "Candle",
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
