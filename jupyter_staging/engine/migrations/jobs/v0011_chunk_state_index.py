"""Chunks: an index on ``(job_id, state)``, so whether a job has a chunk in some state is one index seek.

Every ack of a ``delete_on_ack`` job asks whether the job has a chunk left ``ready`` or ``pending`` (it is
expired once every file was consumed: :func:`~jupyter_staging.engine.retention.expire_if_consumed`). It read
every chunk of the job for that, so acking the 20,000 chunks of a job, one by one, cost O(chunks²) (5,000
chunks: 140 ms per ack, 12 minutes in all). With only the index on ``job_id``, an ``EXISTS`` would still
walk the job's acked chunks to find the first ``ready`` one; ``ix_staging_chunks_job_state`` finds it (or
its absence) at once.

Only an index is added: a server of the release before still reads and writes the chunks.

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

CHUNKS = "staging_chunks"
JOB_STATE = "ix_staging_chunks_job_state"


def upgrade() -> None:
    existing = {ix["name"] for ix in sa.inspect(op.get_bind()).get_indexes(CHUNKS)}
    if JOB_STATE not in existing:
        op.create_index(JOB_STATE, CHUNKS, ["job_id", "state"])


def downgrade() -> None:
    op.drop_index(JOB_STATE, table_name=CHUNKS)
