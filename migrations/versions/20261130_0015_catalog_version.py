"""catalog_version: one row that changes with every catalog write

Revision ID: 0015
Revises: 0014
Create Date: 2026-11-30 03:30:00

Each process keeps a copy of the catalog for offer resolution (docs/performance.md, "The
catalog snapshot") and checks it with one read of ``catalog_version.version`` per batch.
Triggers on ``products``, ``product_affinities`` and ``product_stats`` set the version to
a new random token on every insert, update, delete (and, on PostgreSQL, truncate), so any
writer is seen: ``crosssell catalog import``, a recommendations rebuild, an operator's
``UPDATE``. A token, not a counter: a rolled-back write must never leave a value that a
later, different catalog could take again. The triggers upsert the row, so a table
emptied by hand is refilled by the next catalog write.

PostgreSQL: one ``FOR EACH STATEMENT`` trigger per table; the row is written at a
transaction's first catalog write, its later writes are counted in the transaction-local
setting ``crosssell.catalog_writes``, which the version check reads too. SQLite has only
row triggers: one per table and operation (its rows are updated in place). A later migration that rebuilds one of these tables on
SQLite (``batch_alter_table``) drops its triggers and must create them again.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0015'
down_revision: str | None = '0014'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = ('products', 'product_affinities', 'product_stats')
OPERATIONS = ('insert', 'update', 'delete')

# The row is written once per transaction, at its first catalog write: a row updated
# again and again in one transaction grows a chain of row versions that each later
# update walks (a 43,000-row rebuild, one INSERT per row, took 113-131 s instead of
# 7 s). Later writes of the same transaction count themselves in a transaction-local
# setting instead, which the transaction's own version check reads (it must see its
# own changes); other sessions never see it.
POSTGRESQL_FUNCTION = """
CREATE FUNCTION catalog_changed() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    writes integer := coalesce(
        nullif(current_setting('crosssell.catalog_writes', true), ''), '0'
    )::integer;
BEGIN
    IF writes = 0 THEN
        INSERT INTO catalog_version (id, version)
        VALUES (1, md5(random()::text || clock_timestamp()::text || txid_current()::text))
        ON CONFLICT (id) DO UPDATE SET version = excluded.version;
    END IF;
    PERFORM set_config('crosssell.catalog_writes', (writes + 1)::text, true);
    RETURN NULL;
END
$$
"""
SQLITE_TOKEN = 'lower(hex(randomblob(16)))'


def upgrade() -> None:
    op.create_table(
        'catalog_version',
        sa.Column('id', sa.Integer(), autoincrement=False, nullable=False),
        sa.Column('version', sa.String(length=32), nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_catalog_version')),
    )
    if op.get_bind().dialect.name == 'postgresql':
        op.execute(
            "INSERT INTO catalog_version (id, version) "
            "VALUES (1, md5(random()::text || clock_timestamp()::text))"
        )
        op.execute(POSTGRESQL_FUNCTION)
        for table in TABLES:
            op.execute(
                f'CREATE TRIGGER {table}_catalog_changed '
                f'AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON {table} '
                f'FOR EACH STATEMENT EXECUTE FUNCTION catalog_changed()'
            )
        return
    op.execute(f"INSERT INTO catalog_version (id, version) VALUES (1, {SQLITE_TOKEN})")
    for table in TABLES:
        for operation in OPERATIONS:
            op.execute(
                f'CREATE TRIGGER {table}_{operation}_catalog_changed '
                f'AFTER {operation.upper()} ON {table} BEGIN '
                f'INSERT INTO catalog_version (id, version) VALUES (1, {SQLITE_TOKEN}) '
                f'ON CONFLICT (id) DO UPDATE SET version = excluded.version; END'
            )


def downgrade() -> None:
    if op.get_bind().dialect.name == 'postgresql':
        for table in TABLES:
            op.execute(f'DROP TRIGGER {table}_catalog_changed ON {table}')
        op.execute('DROP FUNCTION catalog_changed()')
    else:
        for table in TABLES:
            for operation in OPERATIONS:
                op.execute(f'DROP TRIGGER {table}_{operation}_catalog_changed')
    op.drop_table('catalog_version')
