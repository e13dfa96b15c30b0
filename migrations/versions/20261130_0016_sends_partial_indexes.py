"""sends: lookup indexes only where the column is set; none on event_id or claim_token

Revision ID: 0016
Revises: 0015
Create Date: 2026-11-30 06:30:00

Every update of a send changes ``status`` (indexed), so none of its four updates
(queued, claimed, handed over, sent) is a HOT update: each new row version gets an entry
in every index whose predicate it meets, a NULL key included. ``provider_message_id``,
``message_id``, ``claim_token``, ``coupon_code`` and ``enrollment_id`` are NULL for part
or all of a send's life, and every query on them is an equality (which implies
``IS NOT NULL``, so the planner uses a partial index, with a parameter too): they are now
indexed only where set. ``coupon_code`` stays unique, through a partial unique index
(NULLs never conflicted). ``sends.event_id`` was indexed, yet no query looks a send up by
its event. ``claim_token`` is no longer indexed: every statement of a worker names its
rows by id too, except the lease renewal, which finds them among the ``sending`` rows
(``ix_sends_status_send_at``); with the index, the planner preferred it to the primary
key for each row's hand-over and read the entries of the whole batch every time.
Together: 28 index entries per sent email instead of 55 (docs/performance.md,
"PostgreSQL work per email").
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0016'
down_revision: str | None = '0015'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PARTIAL = ('provider_message_id', 'message_id', 'enrollment_id')


def _where(column: str) -> dict[str, sa.TextClause]:
    predicate = sa.text(f'{column} IS NOT NULL')
    return {'postgresql_where': predicate, 'sqlite_where': predicate}


def upgrade() -> None:
    with op.batch_alter_table('sends', schema=None) as batch_op:
        batch_op.drop_index('ix_sends_event_id')
        batch_op.drop_index('ix_sends_claim_token')
        batch_op.drop_constraint('uq_sends_coupon_code', type_='unique')
        for column in PARTIAL:
            batch_op.drop_index(f'ix_sends_{column}')
    with op.batch_alter_table('sends', schema=None) as batch_op:
        for column in PARTIAL:
            batch_op.create_index(f'ix_sends_{column}', [column], unique=False, **_where(column))
        batch_op.create_index(
            'uq_sends_coupon_code', ['coupon_code'], unique=True, **_where('coupon_code')
        )


def downgrade() -> None:
    with op.batch_alter_table('sends', schema=None) as batch_op:
        batch_op.drop_index('uq_sends_coupon_code')
        for column in PARTIAL:
            batch_op.drop_index(f'ix_sends_{column}')
    with op.batch_alter_table('sends', schema=None) as batch_op:
        for column in PARTIAL:
            batch_op.create_index(f'ix_sends_{column}', [column], unique=False)
        batch_op.create_unique_constraint('uq_sends_coupon_code', ['coupon_code'])
        batch_op.create_index('ix_sends_event_id', ['event_id'], unique=False)
        batch_op.create_index('ix_sends_claim_token', ['claim_token'], unique=False)
