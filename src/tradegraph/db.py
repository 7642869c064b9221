"""Database plumbing: the async engine, sessions, the declarative ``Base``.

One ``Database`` per app (built from ``Settings``), so tests can run several side by side.
Naming conventions keep constraint names stable across SQLite and PostgreSQL migrations.
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import BigInteger, DateTime, Enum, MetaData, event, text
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.types import TypeDecorator

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every backend (SQLite drops the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class Base(DeclarativeBase):
    """Declarative base for every table."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {int: BigInteger, datetime: UTCDateTime}


def str_enum(cls: type[enum.Enum], name: str, length: int = 16) -> Enum:
    """An enum column stored as a plain string with a CHECK constraint.

    Portable across SQLite and PostgreSQL, and a new member needs no ALTER TYPE.
    """
    return Enum(cls, name=name, native_enum=False, length=length, validate_strings=True)


def utcnow() -> datetime:
    return datetime.now(UTC)


async def asyncpg_transaction(conn: AsyncConnection | AsyncSession) -> Any:
    """The asyncpg connection under a PostgreSQL connection or session, its transaction begun.

    For hot-path statements where SQLAlchemy's per-statement work would cost more than
    the statement. SQLAlchemy's asyncpg adapter sends BEGIN lazily, with its own first
    statement; a raw statement before that would run (and commit) outside the
    transaction, so this begins it first. The adapter's own starter is one BEGIN round
    trip; if a future SQLAlchemy lacks it, any statement through the adapter does the same.
    """
    if isinstance(conn, AsyncSession):
        conn = await conn.connection()
    raw = await conn.get_raw_connection()
    driver: Any = raw.driver_connection
    if not driver.is_in_transaction():
        adapter: Any = raw.dbapi_connection
        start = getattr(adapter, "_start_transaction", None)
        if start is not None and getattr(adapter, "_transaction", False) is None:
            await start()
        else:
            await conn.exec_driver_sql("SELECT 1")
        if not driver.is_in_transaction():
            raise RuntimeError("the transaction did not start")
    return driver


def new_id() -> str:
    """A random public id (UUID4 hex): opaque, not guessable, not sequential."""
    return uuid.uuid4().hex


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()


class Database:
    """An engine and its session factory."""

    def __init__(self, url: str, *, echo: bool = False, pool_size: int = 10) -> None:
        self.url = url
        kwargs: dict[str, Any] = {"echo": echo}
        if not url.startswith("sqlite"):
            # No pre-ping: it costs a round trip per checkout on the hot path. Stale
            # connections are recycled instead, and a failed query surfaces as an error.
            # A steady pool: overflow connections are opened and closed per burst, and a
            # connect costs far more than waiting a moment for a pooled connection.
            kwargs["pool_size"] = pool_size
            kwargs["max_overflow"] = max(2, pool_size // 4)
            kwargs["pool_timeout"] = 10
            kwargs["pool_recycle"] = 1800
        self.engine: AsyncEngine = create_async_engine(url, **kwargs)
        if self.is_sqlite:
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
        self.sessionmaker = async_sessionmaker(self.engine, expire_on_commit=False)
        # Single-statement reads without BEGIN/ROLLBACK round trips (hot-path lookups).
        self.reader = self.engine.execution_options(isolation_level="AUTOCOMMIT")

    @property
    def is_sqlite(self) -> bool:
        return self.url.startswith("sqlite")

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        """A session; the caller commits. Rolled back if the block raises."""
        async with self.sessionmaker() as session:
            try:
                yield session
            except BaseException:
                await session.rollback()
                raise

    async def ping(self) -> bool:
        try:
            async with self.engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
            return True
        except Exception:
            return False

    async def dispose(self) -> None:
        await self.engine.dispose()
