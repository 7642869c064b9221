"""Persistence for the sequencer: one transaction per batch, and the rebuild read.

Rows are written with SQLAlchemy Core (no ORM objects on the hot path): multi-row inserts
and dialect upserts, so a batch of hundreds of commands is a handful of statements.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from operator import itemgetter
from typing import Any

from sqlalchemy import Table, insert, select, tuple_, update
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from tradegraph.db import Database, asyncpg_transaction, utcnow
from tradegraph.exchange import models as m
from tradegraph.exchange.book import OrderStatus
from tradegraph.exchange.engine import (
    BalanceUpdate,
    OrderRequest,
    OrderUpdate,
    Posting,
    Trade,
)


@dataclass
class BatchWrite:
    """Everything one batch changes, collected while the commands run in memory."""

    orders: dict[int, OrderUpdate] = field(default_factory=dict)
    # Orders created by this batch: inserted (COPY on PostgreSQL), never upserted.
    new_orders: set[int] = field(default_factory=set)
    trades: list[Trade] = field(default_factory=list)
    postings: list[tuple[Posting, str | None]] = field(default_factory=list)
    balances: dict[tuple[int, str], BalanceUpdate] = field(default_factory=dict)
    accounts: list[dict[str, Any]] = field(default_factory=list)
    transactions: list[dict[str, Any]] = field(default_factory=list)
    instrument_prices: dict[str, int] = field(default_factory=dict)
    instrument_status: dict[str, str] = field(default_factory=dict)
    state: dict[str, int] = field(default_factory=dict)
    commands: list[dict[str, Any]] = field(default_factory=list)

    def empty(self) -> bool:
        return not (
            self.orders
            or self.trades
            or self.postings
            or self.balances
            or self.accounts
            or self.transactions
            or self.instrument_prices
            or self.instrument_status
            or self.state
            or self.commands
        )


# An order's columns as the sequencer writes them; its times come from the database
# (models.BATCH_TIME) on PostgreSQL, and from :func:`order_row` on SQLite.
ORDER_COLUMNS = (
    "id",
    "account_id",
    "symbol",
    "side",
    "type",
    "time_in_force",
    "status",
    "price",
    "stop_price",
    "quantity",
    "quote_quantity",
    "post_only",
    "stp",
    "client_order_id",
    "filled_qty",
    "remaining_qty",
    "quote_filled",
    "fee_paid",
    "fee_accrued",
    "reserved",
    "budget_left",
    "limit_price",
    "priority",
    "triggered",
    "reason",
)


def order_record(u: OrderUpdate) -> tuple[Any, ...]:
    """An order's row as values in :data:`ORDER_COLUMNS` order (what ``COPY`` takes: no
    dict to build and pick apart for each of a batch's new orders)."""
    r = u.request
    return (
        u.order_id,
        r.account_id,
        r.symbol,
        r.side,
        r.type,
        r.time_in_force,
        u.status,
        r.price,
        r.stop_price,
        r.quantity,
        r.quote_quantity,
        r.post_only,
        r.stp,
        r.client_order_id,
        u.filled_qty,
        u.remaining_qty,
        u.quote_filled,
        u.fee_paid,
        u.fee_accrued,
        u.reserved,
        u.budget_left,
        u.limit_price,
        u.priority,
        u.triggered,
        u.reason,
    )


def order_row(u: OrderUpdate, now: datetime) -> dict[str, Any]:
    """An order's row with its times, as SQLite is given it."""
    row = dict(zip(ORDER_COLUMNS, order_record(u), strict=True))
    row["created_at"] = row["updated_at"] = now
    return row


def order_from_row(row: m.Order) -> OrderUpdate:
    """The engine's view of a stored order (for rebuild)."""
    request = OrderRequest(
        account_id=row.account_id,
        symbol=row.symbol,
        side=row.side,
        type=row.type,
        quantity=row.quantity,
        price=row.price,
        stop_price=row.stop_price,
        quote_quantity=row.quote_quantity,
        time_in_force=row.time_in_force,
        post_only=row.post_only,
        client_order_id=row.client_order_id,
        stp=row.stp,
    )
    return OrderUpdate(
        order_id=row.id,
        status=row.status,
        filled_qty=row.filled_qty,
        remaining_qty=row.remaining_qty,
        quote_filled=row.quote_filled,
        fee_paid=row.fee_paid,
        fee_accrued=row.fee_accrued,
        reserved=row.reserved,
        budget_left=row.budget_left,
        limit_price=row.limit_price,
        priority=row.priority,
        triggered=row.triggered,
        reason=row.reason,
        request=request,
    )


_ORDER_MUTABLE = (
    "status",
    "filled_qty",
    "remaining_qty",
    "quote_filled",
    "fee_paid",
    "fee_accrued",
    "reserved",
    "budget_left",
    "limit_price",
    "priority",
    "triggered",
    "reason",
    "updated_at",
)


# PostgreSQL: every symbol's last trade price of a batch in one statement.
_LAST_PRICES_SQL = (
    "UPDATE instruments AS i SET last_price = v.price"
    " FROM unnest($1::VARCHAR[], $2::BIGINT[]) AS v(symbol, price) WHERE i.symbol = v.symbol"
)


def _table(model: type[Any]) -> Table:
    table: Table = model.__table__
    return table


def _as_records(rows: Sequence[dict[str, Any]]) -> tuple[tuple[str, ...], list[tuple[Any, ...]]]:
    """The first row's keys, and every row's values in that order."""
    columns = tuple(rows[0])
    if len(columns) == 1:
        (name,) = columns
        return columns, [(row[name],) for row in rows]
    values = itemgetter(*columns)
    return columns, [values(row) for row in rows]


class _PgArrays:
    """PostgreSQL: one statement per table per batch, rows sent as one array per column,
    or ``COPY`` (binary) for rows that are only ever inserted.

    ``INSERT ... SELECT * FROM unnest($1::BIGINT[], $2::VARCHAR(24)[], ...)`` (plus
    ``ON CONFLICT ... DO UPDATE`` for upserts) through the transaction's own asyncpg
    connection. Compared with an ``executemany`` through SQLAlchemy it skips per-row
    parameter processing in Python and per-row statement execution in the server (a
    profiled hot spot of both on the order benchmark).

    Rows must carry every column except an autoincrementing key and those with a server
    default (no Python-side defaults apply here); enum columns must store names equal to
    values (they are ``StrEnum``).
    """

    def __init__(self) -> None:
        self._sql: dict[tuple[str, tuple[str, ...]], str] = {}
        self._checked: set[tuple[str, tuple[str, ...]]] = set()

    def _check_columns(self, table: Table, columns: tuple[str, ...]) -> None:
        if (table.name, columns) in self._checked:
            return
        for column in table.columns:
            if (
                column.name not in columns
                and column.autoincrement is not True
                and column.server_default is None
            ):
                raise ValueError(f"{table.name}.{column.name} missing from the rows")
            enum_class = getattr(column.type, "enum_class", None)
            if enum_class is not None and any(e.name != e.value for e in enum_class):
                raise ValueError(f"{table.name}.{column.name}: enum names differ from values")
        self._checked.add((table.name, columns))

    def _statement(
        self, table: Table, columns: tuple[str, ...], keys: Sequence[str], update: Sequence[str]
    ) -> str:
        sql = self._sql.get((table.name, columns))
        if sql is not None:
            return sql
        dialect = postgresql.dialect()
        self._check_columns(table, columns)
        casts = ", ".join(
            f"${i}::{table.columns[name].type.compile(dialect=dialect)}[]"
            for i, name in enumerate(columns, start=1)
        )
        names = ", ".join(f'"{name}"' for name in columns)
        # Names and types come from the table's metadata, never from input.
        sql = f'INSERT INTO "{table.name}" ({names}) SELECT * FROM unnest({casts})'  # noqa: S608
        if keys:
            sets = ", ".join(f'"{c}" = EXCLUDED."{c}"' for c in update)
            conflict = ", ".join(f'"{k}"' for k in keys)
            sql += f" ON CONFLICT ({conflict}) DO UPDATE SET {sets}"
        self._sql[(table.name, columns)] = sql
        return sql

    async def write(
        self,
        conn: AsyncConnection,
        table: Table,
        rows: Sequence[dict[str, Any]],
        keys: Sequence[str] = (),
        update: Sequence[str] = (),
    ) -> None:
        if not rows:
            return
        columns, records = _as_records(rows)
        await self.write_records(conn, table, columns, records, keys, update)

    async def write_records(
        self,
        conn: AsyncConnection,
        table: Table,
        columns: tuple[str, ...],
        records: Sequence[tuple[Any, ...]],
        keys: Sequence[str] = (),
        update: Sequence[str] = (),
    ) -> None:
        """:meth:`write` for rows already laid out as ``columns``."""
        if not records:
            return
        sql = self._statement(table, columns, keys, update)
        arrays = [list(column) for column in zip(*records, strict=True)]
        driver = await asyncpg_transaction(conn)
        await driver.execute(sql, *arrays)

    async def copy(
        self, conn: AsyncConnection, table: Table, rows: Sequence[dict[str, Any]]
    ) -> None:
        """Insert with binary ``COPY``: about half the client CPU of the ``unnest`` insert
        (asyncpg inspects every array element) and less server work too."""
        if not rows:
            return
        columns, records = _as_records(rows)
        await self.copy_records(conn, table, columns, records)

    async def copy_records(
        self,
        conn: AsyncConnection,
        table: Table,
        columns: tuple[str, ...],
        records: Sequence[tuple[Any, ...]],
    ) -> None:
        """:meth:`copy` for rows already laid out as ``columns``."""
        if not records:
            return
        self._check_columns(table, columns)
        driver = await asyncpg_transaction(conn)
        await driver.copy_records_to_table(table.name, records=records, columns=list(columns))


class ExchangeStore:
    """Reads and writes the exchange tables for the sequencer."""

    def __init__(
        self, db: Database, *, fence: Callable[[AsyncConnection], Awaitable[None]] | None = None
    ) -> None:
        self.db = db
        # In the engine process: a leader-lock check inside each commit transaction, so a
        # deposed leader can never write after a successor took over.
        self.fence = fence
        self._insert = sqlite_insert if db.is_sqlite else pg_insert
        self._upserts: dict[str, Any] = {}
        self._arrays = None if db.is_sqlite else _PgArrays()

    async def _upsert(
        self,
        conn: AsyncConnection,
        table: Table,
        rows: Sequence[dict[str, Any]],
        keys: Sequence[str],
        update: Sequence[str],
    ) -> None:
        if not rows:
            return
        if self._arrays is not None:
            await self._arrays.write(conn, table, rows, keys, update)
            return
        stmt = self._upserts.get(table.name)
        if stmt is None:  # built once per table: statement construction is not free
            insert_stmt = self._insert(table)
            stmt = insert_stmt.on_conflict_do_update(
                index_elements=list(keys), set_={c: insert_stmt.excluded[c] for c in update}
            )
            self._upserts[table.name] = stmt
        await conn.execute(stmt, list(rows))

    async def _insert_rows(
        self, conn: AsyncConnection, model: type[Any], rows: Sequence[dict[str, Any]]
    ) -> None:
        if not rows:
            return
        if self._arrays is not None:
            await self._arrays.copy(conn, _table(model), rows)
        else:
            await conn.execute(insert(model), list(rows))

    async def commit(self, batch: BatchWrite) -> None:
        """Write one batch in one transaction; raises if anything fails (nothing kept)."""
        if batch.empty():
            return
        now = utcnow()
        # The rows' times: PostgreSQL fills them in itself (models.BATCH_TIME).
        created_at: dict[str, datetime] = {} if self._arrays else {"created_at": now}
        updated_at: dict[str, datetime] = {} if self._arrays else {"updated_at": now}
        async with self.db.engine.begin() as conn:
            if self.fence is not None:
                await self.fence(conn)
            if batch.accounts:
                await conn.execute(insert(m.Account), batch.accounts)
            if batch.orders:
                new = batch.new_orders
                # An id wrongly taken for new fails the insert, and so the batch: never a
                # silent overwrite.
                created = [u for u in batch.orders.values() if u.order_id in new]
                changed = [u for u in batch.orders.values() if u.order_id not in new]
                if self._arrays is not None:  # PostgreSQL: rows as tuples, COPY the new
                    orders = _table(m.Order)
                    await self._arrays.copy_records(
                        conn, orders, ORDER_COLUMNS, [order_record(u) for u in created]
                    )
                    await self._arrays.write_records(
                        conn,
                        orders,
                        ORDER_COLUMNS,
                        [order_record(u) for u in changed],
                        ["id"],
                        _ORDER_MUTABLE,
                    )
                else:
                    await self._insert_rows(conn, m.Order, [order_row(u, now) for u in created])
                    await self._upsert(
                        conn,
                        _table(m.Order),
                        [order_row(u, now) for u in changed],
                        ["id"],
                        _ORDER_MUTABLE,
                    )
            if batch.trades:
                await self._insert_rows(
                    conn,
                    m.Trade,
                    [
                        {
                            "id": t.trade_id,
                            "symbol": t.symbol,
                            "seq": t.seq,
                            "price": t.price,
                            "qty": t.qty,
                            "notional": t.notional,
                            "taker_side": t.taker_side,
                            "taker_order_id": t.taker_order_id,
                            "maker_order_id": t.maker_order_id,
                            "taker_account_id": t.taker_account_id,
                            "maker_account_id": t.maker_account_id,
                            "taker_fee": t.taker_fee,
                            "maker_fee": t.maker_fee,
                            **created_at,
                        }
                        for t in batch.trades
                    ],
                )
            if batch.postings:
                await self._insert_rows(
                    conn,
                    m.LedgerEntry,
                    [
                        {
                            "from_account_id": p.from_account_id,
                            "to_account_id": p.to_account_id,
                            "asset": p.asset,
                            "amount": p.amount,
                            "reason": p.reason,
                            "order_id": p.order_id,
                            "trade_id": p.trade_id,
                            "ref": ref or p.ref,
                            **created_at,
                        }
                        for p, ref in batch.postings
                    ],
                )
            if batch.transactions:
                await conn.execute(insert(m.Transaction), batch.transactions)
            await self._upsert(
                conn,
                _table(m.Balance),
                [
                    {
                        "account_id": b.account_id,
                        "asset": b.asset,
                        "total": b.total,
                        "locked": b.locked,
                        **updated_at,
                    }
                    for b in batch.balances.values()
                ],
                ["account_id", "asset"],
                ["total", "locked", "updated_at"],
            )
            if batch.instrument_prices and self._arrays is not None:
                driver = await asyncpg_transaction(conn)
                prices = batch.instrument_prices
                await driver.execute(_LAST_PRICES_SQL, list(prices), list(prices.values()))
            else:
                for symbol, price in batch.instrument_prices.items():
                    await conn.execute(
                        update(m.Instrument)
                        .where(m.Instrument.symbol == symbol)
                        .values(last_price=price)
                    )
            for symbol, status in batch.instrument_status.items():
                await conn.execute(
                    update(m.Instrument).where(m.Instrument.symbol == symbol).values(status=status)
                )
            await self._upsert(
                conn,
                _table(m.EngineState),
                [{"key": k, "value": v} for k, v in batch.state.items()],
                ["key"],
                ["value"],
            )
            if batch.commands:
                await self._insert_rows(
                    conn, m.EngineCommand, [{**c, **created_at} for c in batch.commands]
                )

    # ----------------------------------------------------------------- rebuild reads

    async def load(self) -> Snapshot:
        async with self.db.session() as session:
            assets = list(await session.scalars(select(m.Asset)))
            instruments = list(await session.scalars(select(m.Instrument)))
            accounts = list(await session.scalars(select(m.Account)))
            balances = list(await session.scalars(select(m.Balance)))
            open_orders = list(
                await session.scalars(
                    select(m.Order)
                    .where(m.Order.status.in_([OrderStatus.NEW, OrderStatus.PARTIALLY_FILLED]))
                    .order_by(m.Order.priority)
                )
            )
            state = {s.key: s.value for s in await session.scalars(select(m.EngineState))}
            transactions = list(
                await session.scalars(
                    select(m.Transaction).where(m.Transaction.idempotency_key.is_not(None))
                )
            )
        return Snapshot(assets, instruments, accounts, balances, open_orders, state, transactions)

    async def orders_by_client_order_id(self, keys: Iterable[tuple[int, str]]) -> list[m.Order]:
        """The stored orders with these (account, clientOrderId) keys, in one query.

        On the autocommit engine: one round trip, no BEGIN and ROLLBACK around it (this
        runs before any batch that names a clientOrderId the engine does not hold)."""
        async with AsyncSession(self.db.reader) as session:
            rows = await session.scalars(
                select(m.Order).where(
                    tuple_(m.Order.account_id, m.Order.client_order_id).in_(list(keys))
                )
            )
            return list(rows)

    async def command_result(self, command_id: str) -> dict[str, Any] | None:
        async with self.db.session() as session:
            row = await session.get(m.EngineCommand, command_id)
        return json.loads(row.result) if row else None


@dataclass
class Snapshot:
    assets: list[m.Asset]
    instruments: list[m.Instrument]
    accounts: list[m.Account]
    balances: list[m.Balance]
    open_orders: list[m.Order]
    state: dict[str, int]
    transactions: list[m.Transaction]
