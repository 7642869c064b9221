"""orders and trades without foreign keys

The sequencer is the only writer of these tables and checks every account and
instrument in memory before an order exists (as ledger_entries always did). PostgreSQL
checks a foreign key with one query per inserted row: the two on orders were about half
of the server's cost of inserting an order (docs/BENCHMARKS.md).

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-21 14:00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("orders", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("fk_orders_account_id_accounts"), type_="foreignkey")
        batch_op.drop_constraint(batch_op.f("fk_orders_symbol_instruments"), type_="foreignkey")
    with op.batch_alter_table("trades", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("fk_trades_symbol_instruments"), type_="foreignkey")


def downgrade() -> None:
    with op.batch_alter_table("trades", schema=None) as batch_op:
        batch_op.create_foreign_key(
            batch_op.f("fk_trades_symbol_instruments"), "instruments", ["symbol"], ["symbol"]
        )
    with op.batch_alter_table("orders", schema=None) as batch_op:
        batch_op.create_foreign_key(
            batch_op.f("fk_orders_symbol_instruments"), "instruments", ["symbol"], ["symbol"]
        )
        batch_op.create_foreign_key(
            batch_op.f("fk_orders_account_id_accounts"), "accounts", ["account_id"], ["id"]
        )
