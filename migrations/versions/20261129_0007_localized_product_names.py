"""localized product names

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-29 19:00:00.000000

Per-language product texts: ``name_i18n`` and ``description_i18n`` (JSON objects from a
lower-case language tag to the text) and a default ``description``. Existing products
keep their name as the default and get empty translations; nothing is inferred.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0007'
down_revision: str | None = '0006'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Plain ADD COLUMNs with constant defaults: SQLite needs no table rebuild for them.
    op.add_column(
        'products', sa.Column('name_i18n', sa.JSON(), server_default='{}', nullable=False)
    )
    op.add_column('products', sa.Column('description', sa.Text(), nullable=True))
    op.add_column(
        'products',
        sa.Column('description_i18n', sa.JSON(), server_default='{}', nullable=False),
    )


def downgrade() -> None:
    with op.batch_alter_table('products', schema=None) as batch_op:
        batch_op.drop_column('description_i18n')
        batch_op.drop_column('description')
        batch_op.drop_column('name_i18n')
