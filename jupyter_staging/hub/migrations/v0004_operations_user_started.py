"""Operations: an index on ``(user, started, id)``, so a user's newest operations are read in order, without
reading and sorting every operation the user ever ran.

``GET api/operations`` (a user's own, or an admin's ``?user=``) and the service's page list a user's
operations newest first, 100 or 200 of them. Operations are never deleted: through the index on ``user``
alone, the database read all of the user's rows and sorted them for each request (77 ms for a user with
50,000 operations in a database of 100,000, growing with the years); now the newest are an index range.

Only an index is added: a service of the release before still reads and writes the operations.

Revision ID: hub0004
Revises: hub0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "hub0004"
down_revision = "hub0003"
branch_labels = None
depends_on = None

OPERATIONS = "operations"
USER_STARTED = "ix_operations_user_started"


def upgrade() -> None:
    existing = {ix["name"] for ix in sa.inspect(op.get_bind()).get_indexes(OPERATIONS)}
    if USER_STARTED not in existing:
        op.create_index(USER_STARTED, OPERATIONS, ["user", "started", "id"])


def downgrade() -> None:
    op.drop_index(USER_STARTED, table_name=OPERATIONS)
