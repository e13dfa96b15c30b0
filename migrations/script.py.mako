"""${message}

Revision ID: ${up_revision}
Revises: ${down_revision | comma,n}
Create Date: ${create_date}
"""

# Backward compatibility. `crosssell migrate` runs before the new release replaces the old
# processes, so for a while the PREVIOUS release's code runs on this schema (and rolling
# back the code leaves it running on it for good). This migration must keep that code
# working:
# * add columns nullable or with a server default, never NOT NULL without a default: the
#   old code's INSERTs do not name them;
# * never drop or rename a table, column, index or constraint the old code uses in the
#   same release: stop using it in release N, drop it in N+1 (a rename is add + backfill +
#   switch the code + drop later);
# * never narrow a type, add a CHECK or UNIQUE the old code's writes could break, or
#   change what an existing value means;
# * keep the data migration idempotent and its locks short (lock_timeout and
#   statement_timeout are set in env.py; large backfills go in batches);
# * write a downgrade() that undoes exactly this step, so up, down, up works.

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import worker.core.db_types
${imports if imports else ""}
revision: str = ${repr(up_revision)}
down_revision: str | None = ${repr(down_revision)}
branch_labels: str | Sequence[str] | None = ${repr(branch_labels)}
depends_on: str | Sequence[str] | None = ${repr(depends_on)}


def upgrade() -> None:
    ${upgrades if upgrades else "pass"}


def downgrade() -> None:
    ${downgrades if downgrades else "pass"}
