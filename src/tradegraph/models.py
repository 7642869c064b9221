"""Imports every table so ``Base.metadata`` is complete (migrations, tests)."""

from tradegraph.audit.models import AuditEntry
from tradegraph.db import Base
from tradegraph.identity.models import ApiToken, EmailToken, OutboxEmail, RefreshToken, User
from tradegraph.notifications.models import Notification

__all__ = [
    "ApiToken",
    "AuditEntry",
    "Base",
    "EmailToken",
    "Notification",
    "OutboxEmail",
    "RefreshToken",
    "User",
]
