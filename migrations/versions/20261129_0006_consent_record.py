"""consent record

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-29 18:40:00.000000

The history of consent decisions (``consent_records``). Backfill: only opt-outs that
are still in effect and were made through crosssell, so that they keep holding after
an address change — an unsubscribe or complaint suppression of a customer whose
consent is off, and the kinds unticked on the preference page. Nothing else is
inferred; effective values on ``customers`` are not touched.
"""

from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

import worker.core.db_types

revision: str = '0006'
down_revision: str | None = '0005'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BACKFILLED = "backfilled by migration 0006"


def upgrade() -> None:
    records = op.create_table('consent_records',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('customer_id', sa.String(length=128), nullable=False),
    sa.Column('scope', sa.String(length=32), nullable=False),
    sa.Column('granted', sa.Boolean(), nullable=False),
    sa.Column('source', sa.String(length=64), nullable=False),
    sa.Column('email', sa.String(length=320), nullable=True),
    sa.Column('detail', sa.String(length=200), nullable=True),
    sa.Column('decided_at', worker.core.db_types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('recorded_at', worker.core.db_types.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['customer_id'], ['customers.id'], name=op.f('fk_consent_records_customer_id_customers')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_consent_records'))
    )
    with op.batch_alter_table('consent_records', schema=None) as batch_op:
        batch_op.create_index('ix_consent_records_customer_id_scope_decided_at', ['customer_id', 'scope', 'decided_at'], unique=False)
    _backfill(records)


def _backfill(records: sa.Table) -> None:
    customers = sa.table(
        'customers',
        sa.column('id', sa.String()),
        sa.column('email', sa.String()),
        sa.column('email_marketing', sa.Boolean()),
        sa.column('opted_out_kinds', sa.JSON()),
        sa.column('updated_at', worker.core.db_types.UTCDateTime(timezone=True)),
    )
    suppressions = sa.table(
        'suppressions',
        sa.column('email', sa.String()),
        sa.column('reason', sa.String()),
        sa.column('source', sa.String()),
        sa.column('created_at', worker.core.db_types.UTCDateTime(timezone=True)),
    )
    connection = op.get_bind()
    now = datetime.now(UTC)
    rows: list[dict[str, object]] = []
    opted_out = connection.execute(
        sa.select(
            customers.c.id,
            customers.c.email,
            suppressions.c.reason,
            suppressions.c.source,
            suppressions.c.created_at,
        )
        .select_from(customers)
        .join(suppressions, sa.func.lower(customers.c.email) == suppressions.c.email)
        .where(
            customers.c.email_marketing.is_(False),
            suppressions.c.reason.in_(['unsubscribe', 'complaint']),
        )
    )
    for row in opted_out:
        rows.append({
            'customer_id': row.id, 'scope': 'email_marketing', 'granted': False,
            'source': (row.source or 'suppression')[:64], 'email': row.email,
            'detail': f'{row.reason}; {BACKFILLED}', 'decided_at': row.created_at,
            'recorded_at': now,
        })
    with_kinds = connection.execute(
        sa.select(customers.c.id, customers.c.email, customers.c.opted_out_kinds,
                  customers.c.updated_at)
    )
    for row in with_kinds:
        for kind in row.opted_out_kinds or ():
            rows.append({
                'customer_id': row.id, 'scope': str(kind)[:32], 'granted': False,
                'source': 'preference-page', 'email': row.email, 'detail': BACKFILLED,
                'decided_at': row.updated_at, 'recorded_at': now,
            })
    if rows:
        op.bulk_insert(records, rows)


def downgrade() -> None:
    with op.batch_alter_table('consent_records', schema=None) as batch_op:
        batch_op.drop_index('ix_consent_records_customer_id_scope_decided_at')

    op.drop_table('consent_records')
