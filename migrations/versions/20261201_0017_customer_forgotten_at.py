"""customers.forgotten_at: when the customer's personal data was last erased

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-01 00:20:00

An erasure request (``crosssell forget``, a ``forget`` event) records its time on the
customer, and on a customer not stored yet it stores one with nothing but its id and that
time. An event of the customer that occurred before the request and is stored after it
(several consumers do not keep the order across processes) is then stored erased and
changes nothing (docs/events.md, "Forgetting a customer").

A plain ``ADD COLUMN`` on both dialects (nullable, no default): no table rebuild on
SQLite.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import worker.core.db_types

revision: str = '0017'
down_revision: str | None = '0016'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        'customers',
        sa.Column('forgotten_at', worker.core.db_types.UTCDateTime(timezone=True), nullable=True),
    )


def downgrade() -> None:
    with op.batch_alter_table('customers', schema=None) as batch_op:
        batch_op.drop_column('forgotten_at')
