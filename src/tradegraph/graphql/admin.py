"""GraphQL for administrators: user management and the audit log."""

from __future__ import annotations

import json
from datetime import datetime

import strawberry
from sqlalchemy import select
from strawberry.scalars import JSON

from tradegraph.audit.models import AuditEntry
from tradegraph.errors import Forbidden
from tradegraph.graphql.context import Info
from tradegraph.graphql.errors import UserError, returns_payload
from tradegraph.graphql.identity import AccessLevel, Role, User, UserPayload, UserStatus
from tradegraph.graphql.ids import decode_id
from tradegraph.identity import models
from tradegraph.identity.principal import Principal


def _admin(info: Info) -> Principal:
    principal = info.context.require_principal()
    if not principal.is_admin:
        raise Forbidden("this needs the ADMIN role (and a password session, not an API token)")
    return principal


@strawberry.type(description="One row of the hash-chained audit log.")
class AuditEvent:
    seq: int = strawberry.field(description="Position in the chain, from 1.")
    at: datetime = strawberry.field(description="When it happened (UTC).")
    actor_id: str | None = strawberry.field(description="User who acted, if any.")
    action: str = strawberry.field(description="What happened, e.g. user.login_failed.")
    target_type: str | None = strawberry.field(description="Kind of object acted on.")
    target_id: str | None = strawberry.field(description="Id of the object acted on.")
    ip: str | None = strawberry.field(description="Client address.")
    data: JSON = strawberry.field(description="Details of the event.")
    hash: str = strawberry.field(description="SHA-256 over the previous hash and this row.")


@strawberry.type(description="Administrator queries; only for the ADMIN role.")
class AdminQuery:
    @strawberry.field(description="Users, oldest id first; filter by e-mail or name.")
    async def users(
        self,
        info: Info,
        search: str | None = None,
        first: int = 50,
        after: str | None = None,
    ) -> list[User]:
        rows = await info.context.services.identity.list_users(
            _admin(info),
            search=search,
            limit=min(max(first, 1), info.context.settings.max_page_size),
            after=decode_id(after, "User", field="after") if after else None,
        )
        return [User.from_model(u) for u in rows]

    @strawberry.field(description="The newest audit events first.")
    async def audit_log(
        self, info: Info, first: int = 50, before_seq: int | None = None
    ) -> list[AuditEvent]:
        _admin(info)
        stmt = select(AuditEntry).order_by(AuditEntry.seq.desc())
        stmt = stmt.limit(min(max(first, 1), info.context.settings.max_page_size))
        if before_seq is not None:
            stmt = stmt.where(AuditEntry.seq < before_seq)
        async with info.context.services.db.session() as session:
            rows = list(await session.scalars(stmt))
        return [
            AuditEvent(
                seq=r.seq,
                at=r.at,
                actor_id=r.actor_id,
                action=r.action,
                target_type=r.target_type,
                target_id=r.target_id,
                ip=r.ip,
                data=json.loads(r.data),
                hash=r.hash,
            )
            for r in rows
        ]


@strawberry.type
class AdminRootQuery:
    @strawberry.field(description="Administrator queries; ADMIN role only.")
    def admin(self, info: Info) -> AdminQuery | None:
        _admin(info)
        return AdminQuery()


@strawberry.type
class AdminMutation:
    @strawberry.mutation(description="Suspend or reactivate a user; suspension ends sessions.")
    @returns_payload(UserPayload)
    async def admin_set_user_status(
        self, info: Info, user_id: strawberry.ID, status: UserStatus, reason: str | None = None
    ) -> UserPayload:
        user = await info.context.services.identity.set_status(
            _admin(info),
            decode_id(user_id, "User", field="userId"),
            models.UserStatus(status),
            reason,
        )
        return UserPayload(user=User.from_model(user))

    @strawberry.mutation(description="Grant or remove the ADMIN role.")
    @returns_payload(UserPayload)
    async def admin_set_user_role(
        self, info: Info, user_id: strawberry.ID, role: Role
    ) -> UserPayload:
        user = await info.context.services.identity.set_role(
            _admin(info), decode_id(user_id, "User", field="userId"), models.Role(role)
        )
        return UserPayload(user=User.from_model(user))

    @strawberry.mutation(description="Override a user's access level (wins over the gatekeeper).")
    @returns_payload(UserPayload)
    async def admin_set_access_level(
        self,
        info: Info,
        user_id: strawberry.ID,
        access_level: AccessLevel,
        reason: str | None = None,
    ) -> UserPayload:
        user = await info.context.services.identity.set_access_level(
            _admin(info),
            decode_id(user_id, "User", field="userId"),
            models.AccessLevel(access_level),
            reason,
        )
        return UserPayload(user=User.from_model(user))


__all__ = ["AdminMutation", "AdminRootQuery", "UserError"]
