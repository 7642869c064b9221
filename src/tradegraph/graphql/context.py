"""The per-request (or per-websocket-connection) GraphQL context."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.websockets import WebSocket
from strawberry.types import Info as _Info

from tradegraph.errors import DomainError, Unauthenticated
from tradegraph.identity.principal import Principal

if TYPE_CHECKING:
    from tradegraph.services import Services


@dataclass
class Context:
    """What resolvers get as ``info.context``.

    On websockets one context lives as long as the connection, so ``loaders`` are reset
    for every operation by ``OperationScope`` (DataLoader caches must not outlive one).
    """

    services: Services
    request: Request | WebSocket
    response: Response | WebSocket | None
    ip: str
    principal: Principal | None = None
    connection_params: dict[str, Any] | None = None
    auth_error: DomainError | None = None
    loaders: dict[str, Any] = field(default_factory=dict)

    @property
    def settings(self) -> Any:
        return self.services.settings

    def require_principal(self) -> Principal:
        """The caller, or ``UNAUTHENTICATED``; re-checked on every operation."""
        if self.principal is None:
            raise Unauthenticated("sign in first: send 'Authorization: Bearer <token>'")
        return self.principal


Info = _Info[Context, None]


def client_ip(conn: Request | WebSocket) -> str:
    return conn.client.host if conn.client else "unknown"
