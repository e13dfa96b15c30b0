"""conversions

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-29 19:00:43.618231

Attribution: ``conversions`` (a purchase counted for a campaign's sent or held-out
touch, once per order and campaign) and ``send_offers`` (the products each planned or
held-out send offered, resolved at planning time). No backfill: ``crosssell report``
reconciles purchases of the attribution window on its first run.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import worker.core.db_types

revision: str = '0008'
down_revision: str | None = '0007'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('conversions',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('order_id', sa.String(length=128), nullable=False),
    sa.Column('campaign_id', sa.String(length=80), nullable=False),
    sa.Column('send_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('variant', sa.String(length=40), nullable=True),
    sa.Column('arm', sa.String(length=16), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('credited', sa.Boolean(), nullable=False),
    sa.Column('revenue', worker.core.db_types.Money(precision=18, scale=4), nullable=False),
    sa.Column('currency', sa.String(length=3), nullable=False),
    sa.Column('ordered_at', worker.core.db_types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('touched_at', worker.core.db_types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('attributed_at', worker.core.db_types.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['order_id'], ['orders.id'], name=op.f('fk_conversions_order_id_orders'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['send_id'], ['sends.id'], name=op.f('fk_conversions_send_id_sends'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_conversions')),
    sa.UniqueConstraint('order_id', 'campaign_id', name=op.f('uq_conversions_order_id_campaign_id'))
    )
    with op.batch_alter_table('conversions', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_conversions_campaign_id'), ['campaign_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_conversions_ordered_at'), ['ordered_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_conversions_send_id'), ['send_id'], unique=False)

    op.create_table('send_offers',
    sa.Column('send_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('skus', sa.JSON(), nullable=False),
    sa.Column('reason', sa.String(length=64), nullable=True),
    sa.Column('resolved_at', worker.core.db_types.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['send_id'], ['sends.id'], name=op.f('fk_send_offers_send_id_sends'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('send_id', name=op.f('pk_send_offers'))
    )


def downgrade() -> None:
    op.drop_table('send_offers')
    with op.batch_alter_table('conversions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_conversions_send_id'))
        batch_op.drop_index(batch_op.f('ix_conversions_ordered_at'))
        batch_op.drop_index(batch_op.f('ix_conversions_campaign_id'))

    op.drop_table('conversions')
