"""index sends.message_id: webhooks find a send by its opaque Message-ID

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-29 19:20:00

The Message-ID no longer carries the send id (it is an HMAC of it), so a provider
webhook that names only our Message-ID is matched through this index.
"""

from collections.abc import Sequence

from alembic import op

revision: str = '0011'
down_revision: str | None = '0010'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('sends', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_sends_message_id'), ['message_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('sends', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_sends_message_id'))
