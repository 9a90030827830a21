"""Jobs: the parts of the resume data a job's description shows, in columns of their own.

``part_bytes`` (``{Parquet part path: bytes}``) and ``not_converted`` (``{output name: reason}``) were read
out of ``resume``, which lists every item of a job: megabytes for a folder of 20,000 files, parsed again on
every read of the job (26 ms each on SQLite). They are now written beside ``resume`` whenever it is
written, and copied here from the resume data of the jobs already in the database.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

#: Resume data keys copied into the columns of the same names.
SHOWN = ("part_bytes", "not_converted")


def upgrade() -> None:
    for name in SHOWN:
        op.add_column("staging_jobs", sa.Column(name, sa.JSON, nullable=True))
    jobs = sa.table(
        "staging_jobs", sa.column("id", sa.String), *(sa.column(n, sa.JSON) for n in ("resume", *SHOWN))
    )
    bind = op.get_bind()
    rows = bind.execute(sa.select(jobs.c.id, jobs.c.resume).where(jobs.c.resume.is_not(None))).all()
    for job_id, resume in rows:
        values = {name: resume.get(name) for name in SHOWN if isinstance(resume, dict) and resume.get(name)}
        if values:
            bind.execute(jobs.update().where(jobs.c.id == job_id).values(**values))


def downgrade() -> None:
    for name in SHOWN:
        op.drop_column("staging_jobs", name)
