"""the sequencer's rows stamped by the server: DEFAULT now() on their time columns

The sequencer's PostgreSQL writes (binary COPY and ``unnest`` upserts) leave
``orders.created_at``/``updated_at``, ``trades.created_at``, ``ledger_entries.created_at``,
``engine_commands.created_at`` and ``balances.updated_at`` out; the server fills in the
batch transaction's start. Encoding them per row was about a third of the engine's commit
CPU per order (docs/BENCHMARKS.md). SQLite gets the same defaults (the sequencer still
sends its own time there).

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-21 20:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COLUMNS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("orders", ("created_at", "updated_at")),
    ("trades", ("created_at",)),
    ("ledger_entries", ("created_at",)),
    ("engine_commands", ("created_at",)),
    ("balances", ("updated_at",)),
)


def _set_defaults(default: sa.sql.elements.ClauseElement | None) -> None:
    for table, columns in COLUMNS:
        with op.batch_alter_table(table, schema=None) as batch_op:
            for column in columns:
                batch_op.alter_column(
                    column,
                    existing_type=sa.DateTime(timezone=True),
                    existing_nullable=False,
                    server_default=default,
                )


def upgrade() -> None:
    _set_defaults(sa.func.now())


def downgrade() -> None:
    _set_defaults(None)
