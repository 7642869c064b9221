"""lighter order writes: no index on orders.symbol; the command log compressed with lz4

* ``ix_orders_symbol`` goes: every order query is scoped to the caller's accounts
  (``ix_orders_account_created``), and the index was ~20% of PostgreSQL's CPU per
  inserted order.
* ``engine_commands.result``: each placeOrders command logs its 100 results (~38 kB of
  JSON), compressed out of line; pglz cost ~0.43 ms of server CPU per row, lz4 ~0.23 ms.
  Only on PostgreSQL servers built with lz4 (``default_toast_compression`` lists it).

Measurements in docs/BENCHMARKS.md.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-21 18:00:00
"""

from collections.abc import Sequence

from alembic import op
from sqlalchemy import text

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_LZ4 = text(
    "SELECT count(*) FROM pg_settings "
    "WHERE name = 'default_toast_compression' AND 'lz4' = ANY(enumvals)"
)


def _compress_command_log(method: str) -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql" or not bind.execute(_LZ4).scalar():
        return
    op.execute(f"ALTER TABLE engine_commands ALTER COLUMN result SET COMPRESSION {method}")


def upgrade() -> None:
    with op.batch_alter_table("orders", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_orders_symbol"))
    _compress_command_log("lz4")


def downgrade() -> None:
    _compress_command_log("default")
    with op.batch_alter_table("orders", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_orders_symbol"), ["symbol"], unique=False)
