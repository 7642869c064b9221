"""Writing and verifying the hash-chained audit log.

Each row's hash is SHA-256 over the previous row's hash and the row's canonical JSON, so
editing or deleting any row breaks every hash after it. Appends are serialised (an
advisory lock on PostgreSQL, a process lock on the single-process SQLite default) and
written in their own short transaction, after the change they describe has committed.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from dataclasses import dataclass
from datetime import UTC
from typing import Any

from sqlalchemy import select, text

from tradegraph.audit.models import AuditEntry
from tradegraph.db import Database, utcnow

GENESIS_HASH = "0" * 64
_ADVISORY_KEY = 0x7467_6175  # "tgau"


def canonical_row(entry: AuditEntry) -> str:
    """The exact bytes that are hashed: stable key order, UTC timestamps in ISO form."""
    at = entry.at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    payload = {
        "seq": entry.seq,
        "at": at,
        "actor_id": entry.actor_id,
        "action": entry.action,
        "target_type": entry.target_type,
        "target_id": entry.target_id,
        "ip": entry.ip,
        "data": json.loads(entry.data),
    }
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def chain_hash(prev_hash: str, entry: AuditEntry) -> str:
    return hashlib.sha256((prev_hash + canonical_row(entry)).encode()).hexdigest()


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    rows: int
    first_broken_seq: int | None = None
    reason: str | None = None


class AuditLog:
    """Appends to and verifies the audit chain of one database."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._lock = asyncio.Lock()

    async def record(
        self,
        action: str,
        *,
        actor_id: str | None = None,
        target_type: str | None = None,
        target_id: str | None = None,
        ip: str | None = None,
        data: dict[str, Any] | None = None,
    ) -> AuditEntry:
        """Append one row and commit it."""
        async with self._lock, self._db.session() as session:
            if not self._db.is_sqlite:
                await session.execute(
                    text("SELECT pg_advisory_xact_lock(:k)"), {"k": _ADVISORY_KEY}
                )
            last = (
                await session.execute(
                    select(AuditEntry.seq, AuditEntry.hash).order_by(AuditEntry.seq.desc()).limit(1)
                )
            ).first()
            seq, prev = (last[0] + 1, last[1]) if last else (1, GENESIS_HASH)
            entry = AuditEntry(
                seq=seq,
                at=utcnow(),
                actor_id=actor_id,
                action=action,
                target_type=target_type,
                target_id=target_id,
                ip=ip,
                data=json.dumps(data or {}, sort_keys=True, default=str),
                prev_hash=prev,
                hash="",
            )
            entry.hash = chain_hash(prev, entry)
            session.add(entry)
            await session.commit()
            return entry

    async def verify(self, *, batch: int = 1000) -> VerifyResult:
        """Walk the whole chain; name the first row whose link or hash is wrong."""
        prev = GENESIS_HASH
        expected_seq = 1
        rows = 0
        after = 0
        async with self._db.session() as session:
            while True:
                chunk = (
                    (
                        await session.execute(
                            select(AuditEntry)
                            .where(AuditEntry.seq > after)
                            .order_by(AuditEntry.seq)
                            .limit(batch)
                        )
                    )
                    .scalars()
                    .all()
                )
                if not chunk:
                    return VerifyResult(ok=True, rows=rows)
                for entry in chunk:
                    if entry.seq != expected_seq:
                        return VerifyResult(
                            False, rows, expected_seq, f"row {expected_seq} is missing"
                        )
                    if entry.prev_hash != prev:
                        return VerifyResult(
                            False, rows, entry.seq, "prev_hash does not match the row before"
                        )
                    if chain_hash(prev, entry) != entry.hash:
                        return VerifyResult(False, rows, entry.seq, "row content was altered")
                    prev = entry.hash
                    expected_seq += 1
                    rows += 1
                after = chunk[-1].seq
