"""activity outbox

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-29 19:10:00.000000

The ``activity_outbox`` table: activity events (email sent, bounced, complaint,
unsubscribe, conversion) written with the change they report and published to the
activity exchange after commit. Nothing to backfill: activity before this revision is
not replayed.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import worker.core.db_types

revision: str = '0009'
down_revision: str | None = '0008'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('activity_outbox',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('activity_id', sa.String(length=200), nullable=False),
    sa.Column('type', sa.String(length=32), nullable=False),
    sa.Column('customer_id', sa.String(length=128), nullable=False),
    sa.Column('occurred_at', worker.core.db_types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('data', sa.JSON(), nullable=False),
    sa.Column('created_at', worker.core.db_types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('published_at', worker.core.db_types.UTCDateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_activity_outbox')),
    sa.UniqueConstraint('activity_id', name=op.f('uq_activity_outbox_activity_id'))
    )
    with op.batch_alter_table('activity_outbox', schema=None) as batch_op:
        batch_op.create_index('ix_activity_outbox_published_at_id', ['published_at', 'id'], unique=False)
        batch_op.create_index(batch_op.f('ix_activity_outbox_customer_id'), ['customer_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_activity_outbox_created_at'), ['created_at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('activity_outbox', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_activity_outbox_created_at'))
        batch_op.drop_index(batch_op.f('ix_activity_outbox_customer_id'))
        batch_op.drop_index('ix_activity_outbox_published_at_id')

    op.drop_table('activity_outbox')
