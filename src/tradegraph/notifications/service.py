"""Creating, listing and streaming a user's notifications."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

from sqlalchemy import and_, or_, select, update

from tradegraph.db import Database, utcnow
from tradegraph.errors import DomainError
from tradegraph.events import EventPublisher
from tradegraph.identity.principal import Principal
from tradegraph.notifications.models import Notification
from tradegraph.pubsub import PubSub, is_gap

log = logging.getLogger("tradegraph.notifications")


def topic_for(user_id: str) -> str:
    return f"notifications:{user_id}"


def to_event_data(row: Notification) -> dict[str, Any]:
    return {
        "id": row.id,
        "kind": row.kind,
        "title": row.title,
        "body": row.body,
        "data": json.loads(row.data),
        "created_at": row.created_at.isoformat(),
    }


class NotificationService:
    def __init__(self, db: Database, events: EventPublisher, pubsub: PubSub) -> None:
        self.db = db
        self.events = events
        self.pubsub = pubsub

    async def notify(
        self,
        user_id: str,
        kind: str,
        title: str,
        body: str = "",
        data: dict[str, Any] | None = None,
    ) -> Notification:
        """Store a notification, then publish it (a failed publish loses only the push)."""
        row = Notification(
            user_id=user_id,
            kind=kind,
            title=title[:200],
            body=body,
            data=json.dumps(data or {}, default=str),
        )
        async with self.db.session() as session:
            session.add(row)
            await session.commit()
        try:
            await self.events.publish(topic_for(user_id), "NOTIFICATION", to_event_data(row))
        except DomainError:
            log.warning("notification %s stored but not pushed: pub/sub unavailable", row.id)
        return row

    async def list_for(
        self,
        principal: Principal,
        *,
        unread_only: bool,
        limit: int,
        after: tuple[datetime, str] | None,
    ) -> list[Notification]:
        """Newest first, keyset-paginated on (created_at, id)."""
        stmt = (
            select(Notification)
            .where(Notification.user_id == principal.user_id)
            .order_by(Notification.created_at.desc(), Notification.id.desc())
            .limit(limit)
        )
        if unread_only:
            stmt = stmt.where(Notification.read_at.is_(None))
        if after is not None:
            at, row_id = after
            stmt = stmt.where(
                or_(
                    Notification.created_at < at,
                    and_(Notification.created_at == at, Notification.id < row_id),
                )
            )
        async with self.db.session() as session:
            return list(await session.scalars(stmt))

    async def get_many(self, principal: Principal, ids: list[str]) -> list[Notification]:
        """Only the caller's own rows are ever loaded."""
        stmt = select(Notification).where(
            Notification.user_id == principal.user_id, Notification.id.in_(ids)
        )
        async with self.db.session() as session:
            return list(await session.scalars(stmt))

    async def mark_read(self, principal: Principal, ids: list[str] | None) -> int:
        """Mark the given notifications (or all when ``ids`` is None) as read."""
        stmt = (
            update(Notification)
            .where(Notification.user_id == principal.user_id, Notification.read_at.is_(None))
            .values(read_at=utcnow())
        )
        if ids is not None:
            if len(ids) > 200:
                raise DomainError("at most 200 ids at once", code="INVALID_INPUT", field="ids")
            stmt = stmt.where(Notification.id.in_(ids))
        async with self.db.session() as session:
            result = await session.execute(stmt)
            await session.commit()
        return int(result.rowcount)  # type: ignore[attr-defined]

    async def stream(self, principal: Principal) -> AsyncIterator[dict[str, Any]]:
        """The user's notification events as they happen; ends with an error on overflow."""
        async with self.pubsub.subscribe(topic_for(principal.user_id)) as subscription:
            async for message in subscription:
                if is_gap(message):
                    if message.get("final"):
                        raise DomainError(
                            "you fell behind; resubscribe and reload notifications",
                            code="STREAM_GAP",
                        )
                    continue
                yield message
