"""Jobs: the resume data moves out of the job's row into a table of its own, ``staging_job_resume``.

The resume data lists every item of a job: megabytes of JSON for a folder of 20,000 files. In the job's
row, every progress update rewrote them (SQLite rewrites a whole row: 11 ms per update of a 20,000-file
job, about 70 updates per run) and every read of a column stored after them walked them (3 ms). Now the
job's row stays small and the resume data is written only when it changes.

The column is dropped where the database can (PostgreSQL, MySQL / MariaDB, SQLite 3.35.5 and later, with
``ALTER TABLE ... DROP COLUMN``; 3.35.5 fixed defects of 3.35.0's ``DROP COLUMN``); an older SQLite keeps it,
emptied, because dropping it there means rebuilding the table, and dropping the old table would delete
every job's chunks and log lines through their ``ON DELETE CASCADE`` keys.

Every server using one database must run this release or a later one: code of an earlier release fails on
the dropped column (or, where it is kept, reads no resume data). Stop them all before the upgrade.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlite3

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

JOBS, RESUME = "staging_jobs", "staging_job_resume"


def _tables() -> tuple[sa.TableClause, sa.TableClause]:
    jobs = sa.table(JOBS, sa.column("id", sa.String), sa.column("resume", sa.JSON))
    resume = sa.table(RESUME, sa.column("job_id", sa.String), sa.column("resume", sa.JSON))
    return jobs, resume


def _can_drop_columns(bind: sa.Connection) -> bool:
    """True where ``ALTER TABLE ... DROP COLUMN`` works without rebuilding the table."""
    return bind.dialect.name != "sqlite" or sqlite3.sqlite_version_info >= (3, 35, 5)


def upgrade() -> None:
    op.create_table(
        RESUME,
        sa.Column("job_id", sa.String(36), sa.ForeignKey(f"{JOBS}.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("resume", sa.JSON(none_as_null=True), nullable=True),
    )
    jobs, resume = _tables()
    bind = op.get_bind()
    bind.execute(
        resume.insert().from_select(
            ["job_id", "resume"], sa.select(jobs.c.id, jobs.c.resume).where(jobs.c.resume.is_not(None))
        )
    )
    if _can_drop_columns(bind):
        op.drop_column(JOBS, "resume")
    else:
        bind.execute(jobs.update().values(resume=sa.null()))


def downgrade() -> None:
    bind = op.get_bind()
    if "resume" not in {c["name"] for c in sa.inspect(bind).get_columns(JOBS)}:
        op.add_column(JOBS, sa.Column("resume", sa.JSON, nullable=True))
    jobs, resume = _tables()
    rows = bind.execute(sa.select(resume.c.job_id, resume.c.resume)).all()
    for job_id, data in rows:
        bind.execute(jobs.update().where(jobs.c.id == job_id).values(resume=data))
    op.drop_table(RESUME)
