"""Jobs: an index on ``(owner, state, created_at, id)``, so the jobs of an owner in one state are read
without walking the owner's finished jobs, however many years of them there are.

``GET /jobs?state=running`` (``paused``, ``queued``...) and the opening of ``GET /events`` (every queued,
running or paused job of the owner: :func:`~jupyter_staging.engine.snapshot.unfinished_jobs`) read the jobs
in those states only. Through ``(owner, created_at, id)`` (migration 0009) the database walked every job of
the owner to find the few unfinished ones: 4 ms with 10,000 jobs for an empty answer, growing with the
years; now 0.4 ms.

(An index on ``(state, expires_at)`` for the TTL sweep was tried with it and left out: SQLite's planner
then took it for the destination lookup of ``POST /jobs``, ``tests/hub/test_job_indexes.py``.)

Only an index is added: a server of the release before still reads and writes the jobs.

Revision ID: 0012
Revises: 0011
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

JOBS = "staging_jobs"
OWNER_STATE = "ix_staging_jobs_owner_state"


def upgrade() -> None:
    existing = {ix["name"] for ix in sa.inspect(op.get_bind()).get_indexes(JOBS)}
    if OWNER_STATE not in existing:
        op.create_index(OWNER_STATE, JOBS, ["owner", "state", "created_at", "id"])


def downgrade() -> None:
    op.drop_index(OWNER_STATE, table_name=JOBS)
