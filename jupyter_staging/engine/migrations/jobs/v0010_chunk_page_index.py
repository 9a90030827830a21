"""Chunks: an index on ``(job_id, index)``, so a page of a job's chunks is one index range read.

``GET /jobs/{id}/chunks?offset=N&limit=M`` (and a kernel's ``iter_chunks`` asking from the next chunk it
waits for) reads the chunks of one job of index ``>= N`` in index order. With only the index on ``job_id``,
the database read every chunk of the job (20,000 for a large folder) and sorted them for each page; now
``ix_staging_chunks_job_index`` hands them in order from ``N``.

Only an index is added: a server of the release before still reads and writes the chunks.

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

CHUNKS = "staging_chunks"
JOB_INDEX = "ix_staging_chunks_job_index"


def upgrade() -> None:
    existing = {ix["name"] for ix in sa.inspect(op.get_bind()).get_indexes(CHUNKS)}
    if JOB_INDEX not in existing:
        op.create_index(JOB_INDEX, CHUNKS, ["job_id", "index"])


def downgrade() -> None:
    op.drop_index(JOB_INDEX, table_name=CHUNKS)
