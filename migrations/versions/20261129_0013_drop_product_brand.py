"""drop products.brand

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-29 21:40:00.000000

``products.brand`` was stored by the catalog import and read by nothing: no condition,
offer or template uses it. The catalog import still accepts a ``brand`` column (files
written for earlier versions import unchanged) and ignores it. The downgrade brings the
column back empty: the values are gone with the upgrade.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0013'
# 0012 is on another branch; the chain is set to 0011 -> 0012 -> 0013 when both land.
down_revision: str | None = '0012'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # batch: SQLite rebuilds the table to drop a column; PostgreSQL drops it in place.
    with op.batch_alter_table('products', schema=None) as batch_op:
        batch_op.drop_column('brand')


def downgrade() -> None:
    with op.batch_alter_table('products', schema=None) as batch_op:
        batch_op.add_column(sa.Column('brand', sa.String(length=128), nullable=True))
