"""a crash-loop cap: sends.claims, the claims since the last hand-over

Revision ID: 0014
Revises: 0013
Create Date: 2026-11-30 00:30:00

Attempts are counted at the hand-over, so a send that kills its worker before it (out
of memory while rendering, say) came back at every lease expiry forever. ``claims``
counts the claims made since the last hand-over or release; the sweeper ends a send
whose claim expired for the ``CROSSSELL_MAX_CLAIMS``-th time as ``failed`` /
``claims_exhausted`` (docs/delivery.md). Existing rows start at 0; a worker of the
previous release never writes the column, which keeps its server default.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0014'
down_revision: str | None = '0013'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('sends', schema=None) as batch_op:
        batch_op.add_column(
            sa.Column('claims', sa.Integer(), server_default=sa.text('0'), nullable=False)
        )


def downgrade() -> None:
    with op.batch_alter_table('sends', schema=None) as batch_op:
        batch_op.drop_column('claims')
