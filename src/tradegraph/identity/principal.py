"""Who is calling: the authenticated principal every service call is made for."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from tradegraph.errors import Forbidden
from tradegraph.identity.models import AccessLevel, Role, UserStatus

Scope = Literal["read", "trade"]
ALL_SCOPES: frozenset[str] = frozenset({"read", "trade"})


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller: a user through a session or through an API token."""

    user_id: str
    role: Role
    status: UserStatus
    access_level: AccessLevel
    via: Literal["session", "api_token"] = "session"
    scopes: frozenset[str] = ALL_SCOPES
    token_id: str | None = None

    @property
    def is_admin(self) -> bool:
        # API tokens never carry admin powers: integrators get read/trade only.
        return self.role is Role.ADMIN and self.via == "session"

    def require_scope(self, scope: Scope) -> None:
        if scope not in self.scopes:
            raise Forbidden(f"this token lacks the '{scope}' scope", code="INSUFFICIENT_SCOPE")

    def require_admin(self) -> None:
        if not self.is_admin:
            raise Forbidden("admin role required")
