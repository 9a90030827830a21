"""Jobs: changes to the resume data are written as rows of their own, ``staging_resume_changes``.

A conversion records a few small entries per table in the resume data, which lists every item of the job;
writing it whole for each made a folder of N small tables cost O(N²) (1,000 five-row CSV files: 75 s).
Each write now adds one row of changes, applied on top of ``staging_job_resume`` when it is read
(:mod:`jupyter_staging.engine.resumechanges`), and a whole write replaces them. The column
``staging_jobs.output_bytes`` holds the sum of the Parquet parts' bytes, which a running job keeps with
each write of changes (``part_bytes`` itself is written with changes only while small).

A downgrade folds each job's changes into its resume data first, so a running job loses nothing. Every
server using one database must run this release or a later one: an earlier release would not read the
changes. Stop them all before the upgrade.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlite3

import sqlalchemy as sa
from alembic import op

from jupyter_staging.engine.resumechanges import apply_changes

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

JOBS, RESUME, CHANGES = "staging_jobs", "staging_job_resume", "staging_resume_changes"


def _can_drop_columns(bind: sa.Connection) -> bool:
    """True where ``ALTER TABLE ... DROP COLUMN`` works without rebuilding the table (migration 0004)."""
    return bind.dialect.name != "sqlite" or sqlite3.sqlite_version_info >= (3, 35, 5)


#: The columns shown beside the resume data that a downgrade writes from the folded changes.
SHOWN = ("part_bytes", "not_converted", "bytes_columns")


def upgrade() -> None:
    bind = op.get_bind()
    if "output_bytes" in {c["name"] for c in sa.inspect(bind).get_columns(JOBS)}:
        # Kept by a downgrade on an older SQLite, and not kept up since: summed from part_bytes again.
        jobs = sa.table(JOBS, sa.column("output_bytes", sa.BigInteger))
        bind.execute(jobs.update().values(output_bytes=None))
    else:
        op.add_column(JOBS, sa.Column("output_bytes", sa.BigInteger, nullable=True))
    op.create_table(
        CHANGES,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("job_id", sa.String(36), sa.ForeignKey(f"{JOBS}.id", ondelete="CASCADE"), nullable=False),
        sa.Column("changes", sa.JSON, nullable=False),
    )
    op.create_index(f"ix_{CHANGES}_job_id", CHANGES, ["job_id"])


def downgrade() -> None:
    bind = op.get_bind()
    resume = sa.table(RESUME, sa.column("job_id", sa.String), sa.column("resume", sa.JSON))
    changes = sa.table(CHANGES, sa.column("id", sa.Integer), sa.column("job_id", sa.String),
                       sa.column("changes", sa.JSON))  # fmt: skip
    writes: dict[str, list[list[list[object]]]] = {}
    for job_id, rows in bind.execute(sa.select(changes.c.job_id, changes.c.changes).order_by(changes.c.id)):
        writes.setdefault(job_id, []).append(rows)
    for job_id, rows in writes.items():
        known = bind.execute(sa.select(resume.c.resume).where(resume.c.job_id == job_id)).first()
        data = apply_changes(known[0] if known is not None else None, rows)
        if known is None:
            bind.execute(resume.insert().values(job_id=job_id, resume=data))
        else:
            bind.execute(resume.update().where(resume.c.job_id == job_id).values(resume=data))
    # The shown columns whole, as the release before reads them (this one writes ``part_bytes`` only while
    # small, beside ``output_bytes``, and big ones only with whole writes).
    jobs = sa.table(
        JOBS, sa.column("id", sa.String), *(sa.column(name, sa.JSON(none_as_null=True)) for name in SHOWN)
    )
    for job_id, data in bind.execute(sa.select(resume.c.job_id, resume.c.resume)).all():
        shown = {name: (data or {}).get(name) or None for name in SHOWN}
        bind.execute(jobs.update().where(jobs.c.id == job_id).values(**shown))
    op.drop_table(CHANGES)  # and its index (MySQL refuses to drop an index its foreign key uses)
    if _can_drop_columns(bind):
        op.drop_column(JOBS, "output_bytes")
    else:  # kept (an older SQLite would rebuild the table), unread by the release before; emptied
        bind.execute(
            sa.table(JOBS, sa.column("output_bytes", sa.BigInteger)).update().values(output_bytes=None)
        )
