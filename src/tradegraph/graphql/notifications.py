"""GraphQL for notifications: list, mark read, live stream."""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, Iterable
from datetime import datetime
from typing import Any

import strawberry
from strawberry.scalars import JSON

from tradegraph.graphql.context import Info
from tradegraph.graphql.errors import UserError, returns_payload
from tradegraph.graphql.ids import decode_id
from tradegraph.graphql.pagination import (
    Connection,
    build_connection,
    check_page_size,
    decode_cursor,
)
from tradegraph.graphql.streams import track
from tradegraph.notifications import models


@strawberry.type(description="A message for the user: security events, fills, challenge results.")
class Notification(strawberry.relay.Node):
    id: strawberry.relay.NodeID[str]
    kind: str = strawberry.field(description="Category, e.g. SECURITY, ORDER, CHALLENGE.")
    title: str = strawberry.field(description="Short headline.")
    body: str = strawberry.field(description="Longer text, may be empty.")
    data: JSON = strawberry.field(description="Structured details for the UI.")
    created_at: datetime = strawberry.field(description="When it was created (UTC).")
    read: bool = strawberry.field(description="Whether the user marked it read.")

    @classmethod
    def from_model(cls, row: models.Notification) -> Notification:
        return cls(
            id=row.id,
            kind=row.kind,
            title=row.title,
            body=row.body,
            data=json.loads(row.data),
            created_at=row.created_at,
            read=row.read_at is not None,
        )

    @classmethod
    async def resolve_nodes(  # type: ignore[override]
        cls, *, info: Info, node_ids: Iterable[str], required: bool = False
    ) -> list[Notification | None]:
        principal = info.context.principal
        ids = list(node_ids)
        if principal is None:
            return [None] * len(ids)
        rows = await info.context.services.notifications.get_many(principal, ids)
        found = {r.id: r for r in rows}
        return [Notification.from_model(found[i]) if i in found else None for i in ids]

    @classmethod
    def from_event(cls, data: dict[str, Any]) -> Notification:
        return cls(
            id=data["id"],
            kind=data["kind"],
            title=data["title"],
            body=data["body"],
            data=data["data"],
            created_at=datetime.fromisoformat(data["created_at"]),
            read=False,
        )


@strawberry.type(description="The result of markNotificationsRead.")
class MarkNotificationsReadPayload:
    updated: int = strawberry.field(default=0, description="How many were marked read.")
    errors: list[UserError] = strawberry.field(default_factory=list, description="Failures.")


@strawberry.type
class NotificationQuery:
    @strawberry.field(description="Your notifications, newest first.")
    async def notifications(
        self,
        info: Info,
        unread_only: bool | None = False,
        first: int = 50,
        after: str | None = None,
    ) -> Connection[Notification]:
        principal = info.context.require_principal()
        check_page_size(first, info.context.settings.max_page_size)
        key = decode_cursor(after, size=2)
        rows = await info.context.services.notifications.list_for(
            principal,
            unread_only=bool(unread_only),
            limit=first + 1,
            after=(datetime.fromisoformat(key[0]), str(key[1])) if key else None,
        )
        return build_connection(
            rows, first, lambda r: (r.created_at.isoformat(), r.id), Notification.from_model
        )


@strawberry.type
class NotificationMutation:
    @strawberry.mutation(description="Mark notifications read: the given ids, or all of them.")
    @returns_payload(MarkNotificationsReadPayload)
    async def mark_notifications_read(
        self, info: Info, ids: list[strawberry.ID] | None = None
    ) -> MarkNotificationsReadPayload:
        principal = info.context.require_principal()
        raw = [decode_id(i, "Notification", field="ids") for i in ids] if ids is not None else None
        updated = await info.context.services.notifications.mark_read(principal, raw)
        return MarkNotificationsReadPayload(updated=updated)


@strawberry.type
class NotificationSubscription:
    @strawberry.subscription(description="Your notifications as they are created.")
    async def my_notifications(self, info: Info) -> AsyncGenerator[Notification, None]:
        principal = info.context.require_principal()
        stream = info.context.services.notifications.stream(principal)
        async for event in track(info, stream):
            yield Notification.from_event(event["data"])
