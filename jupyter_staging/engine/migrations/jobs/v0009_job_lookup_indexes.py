"""Jobs: indexes for the two questions every request asks, so they stay fast as jobs accumulate over years.

Finished and expired jobs stay in the database. With 100,000 of them in one SQLite file, a page of
``GET /jobs`` (one owner's jobs, newest first) sorted every one of the owner's rows (0.2-0.5 s), and each
``POST /jobs`` looked for the jobs writing to its destination by scanning the table (about 0.1 s per
lookup, two per request); on a database shared by a hub's servers, every user's jobs. Now:

- ``ix_staging_jobs_owner_created`` on ``(owner, created_at, id)``: a page is read in index order;
- ``ix_staging_jobs_destination`` on ``destination``: a hash index on PostgreSQL (a B-tree entry is limited
  to about 2,700 bytes, and a destination may hold 4,096 characters), its first 255 characters on MySQL /
  MariaDB (an index of a ``TEXT`` column needs a length), the whole column on SQLite.

Only indexes are added: a server of the release before still reads and writes the jobs.

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

JOBS = "staging_jobs"
OWNER_CREATED = "ix_staging_jobs_owner_created"
DESTINATION = "ix_staging_jobs_destination"


def upgrade() -> None:
    existing = {ix["name"] for ix in sa.inspect(op.get_bind()).get_indexes(JOBS)}
    if OWNER_CREATED not in existing:
        op.create_index(OWNER_CREATED, JOBS, ["owner", "created_at", "id"])
    if DESTINATION not in existing:
        op.create_index(DESTINATION, JOBS, ["destination"], postgresql_using="hash", mysql_length=255)


def downgrade() -> None:
    op.drop_index(DESTINATION, table_name=JOBS)
    op.drop_index(OWNER_CREATED, table_name=JOBS)
