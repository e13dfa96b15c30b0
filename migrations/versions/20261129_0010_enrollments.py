"""enrollments

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-29 19:30:00.000000

Sequences: one ``enrollments`` row per (campaign, customer, entry), and on ``sends`` the
enrollment and step an email belongs to. Existing sends are one-email campaigns: both
new columns stay NULL for them.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import worker.core.db_types

revision: str = '0010'
down_revision: str | None = '0009'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('enrollments',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('campaign_id', sa.String(length=80), nullable=False),
    sa.Column('customer_id', sa.String(length=128), nullable=False),
    sa.Column('entry_event_id', sa.String(length=128), nullable=False),
    sa.Column('entry_slot', sa.String(length=40), nullable=False),
    sa.Column('entered_at', worker.core.db_types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('variant', sa.String(length=40), nullable=False),
    sa.Column('held_out', sa.Boolean(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('done', sa.JSON(), nullable=False),
    sa.Column('steps_sent', sa.Integer(), nullable=False),
    sa.Column('last_step_at', worker.core.db_types.UTCDateTime(timezone=True), nullable=True),
    sa.Column('next_step_id', sa.String(length=40), nullable=True),
    sa.Column('next_due_at', worker.core.db_types.UTCDateTime(timezone=True), nullable=True),
    sa.Column('offered_skus', sa.JSON(), nullable=False),
    sa.Column('purchased_since_entry', sa.Boolean(), nullable=False),
    sa.Column('categories_since_entry', sa.JSON(), nullable=False),
    sa.Column('exit_reason', sa.String(length=32), nullable=True),
    sa.Column('exit_event_id', sa.String(length=128), nullable=True),
    sa.Column('exited_at', worker.core.db_types.UTCDateTime(timezone=True), nullable=True),
    sa.Column('created_at', worker.core.db_types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', worker.core.db_types.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['customer_id'], ['customers.id'], name=op.f('fk_enrollments_customer_id_customers')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_enrollments')),
    sa.UniqueConstraint('campaign_id', 'customer_id', 'entry_slot', name=op.f('uq_enrollments_campaign_id_customer_id_entry_slot')),
    sa.UniqueConstraint('campaign_id', 'entry_event_id', name=op.f('uq_enrollments_campaign_id_entry_event_id'))
    )
    with op.batch_alter_table('enrollments', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_enrollments_customer_id'), ['customer_id'], unique=False)
        batch_op.create_index('ix_enrollments_status_next_due_at', ['status', 'next_due_at'], unique=False)

    with op.batch_alter_table('sends', schema=None) as batch_op:
        batch_op.add_column(sa.Column('enrollment_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True))
        batch_op.add_column(sa.Column('step_id', sa.String(length=40), nullable=True))
        batch_op.create_index(batch_op.f('ix_sends_enrollment_id'), ['enrollment_id'], unique=False)
        batch_op.create_foreign_key(batch_op.f('fk_sends_enrollment_id_enrollments'), 'enrollments', ['enrollment_id'], ['id'])


def downgrade() -> None:
    with op.batch_alter_table('sends', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('fk_sends_enrollment_id_enrollments'), type_='foreignkey')
        batch_op.drop_index(batch_op.f('ix_sends_enrollment_id'))
        batch_op.drop_column('step_id')
        batch_op.drop_column('enrollment_id')

    with op.batch_alter_table('enrollments', schema=None) as batch_op:
        batch_op.drop_index('ix_enrollments_status_next_due_at')
        batch_op.drop_index(batch_op.f('ix_enrollments_customer_id'))

    op.drop_table('enrollments')
