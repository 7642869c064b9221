"""Imports every table so ``Base.metadata`` is complete (migrations, tests)."""

from tradegraph.audit.models import AuditEntry
from tradegraph.db import Base
from tradegraph.identity.models import ApiToken, EmailToken, OutboxEmail, RefreshToken, User

__all__ = ["ApiToken", "AuditEntry", "Base", "EmailToken", "OutboxEmail", "RefreshToken", "User"]
