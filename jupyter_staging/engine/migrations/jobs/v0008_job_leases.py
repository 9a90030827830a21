"""Jobs: ``lease_expires_at``, until when the process named by ``runner`` holds a queued or running job.

Servers of several hosts may share one job database (JupyterHub named servers in two pods with one shared
home). A server cannot check a process of another host, and took such a runner for dead: at its start it
resumed a job a live server of another host was running, and the two runs wrote the same part files. A
runner now renews a lease on its jobs (:mod:`jupyter_staging.engine.leases`), and a server of another host
takes a job over only once the lease has expired. Rows written before have none: their runner is of the
release before, and is judged as then.

The column is only added: a server of the release before still reads and writes the jobs (it leaves the
column as it is), so servers sharing one database may be upgraded one by one.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlite3

import sqlalchemy as sa
from alembic import op

from jupyter_staging.engine.migrate import mysql_fractional_seconds

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

JOBS = "staging_jobs"


def upgrade() -> None:
    # Kept by a downgrade on an older SQLite: emptied there, so taken as it is.
    if "lease_expires_at" not in {c["name"] for c in sa.inspect(op.get_bind()).get_columns(JOBS)}:
        op.add_column(JOBS, sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True))
    mysql_fractional_seconds(op.get_bind(), [(JOBS, "lease_expires_at", True)], fsp=6)


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "sqlite" or sqlite3.sqlite_version_info >= (3, 35, 5):
        op.drop_column(JOBS, "lease_expires_at")
    else:  # an older SQLite would rebuild the table (migration 0004): kept, emptied, unread before
        jobs = sa.table(JOBS, sa.column("lease_expires_at", sa.DateTime(timezone=True)))
        bind.execute(jobs.update().values(lease_expires_at=None))
