"""owned claims with a lease: sends.claim_token, lease_expires_at, handed_over_at

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-29 21:40:00

A worker claims a batch of sends under a random token and a lease it renews while it
works; the hand-over of each message is recorded (``handed_over_at``) just before the
irreversible step. The sweeper gives an expired claim without a hand-over back to the
queue and reports one with a hand-over as ambiguous (docs/delivery.md).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import worker.core.db_types

revision: str = '0012'
down_revision: str | None = '0011'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('sends', schema=None) as batch_op:
        batch_op.add_column(sa.Column('claim_token', sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column('lease_expires_at', worker.core.db_types.UTCDateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('handed_over_at', worker.core.db_types.UTCDateTime(timezone=True), nullable=True))
        batch_op.create_index(batch_op.f('ix_sends_claim_token'), ['claim_token'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('sends', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_sends_claim_token'))
        batch_op.drop_column('handed_over_at')
        batch_op.drop_column('lease_expires_at')
        batch_op.drop_column('claim_token')
