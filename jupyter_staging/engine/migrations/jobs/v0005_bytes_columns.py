"""Jobs: ``bytes_columns``, the columns a conversion read as bytes rather than text, shown as a notice.

A CSV/TSV file that is not UTF-8 (Latin-1, say) and was converted without its ``encoding`` gives binary
columns: the values are kept byte for byte, but pandas shows ``bytes``. ``{output name: [column names]}``
is written beside the resume data (like ``part_bytes`` and ``not_converted``, migration 0003) so a job's
description can say so at once. Jobs converted before this revision have none.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("staging_jobs", sa.Column("bytes_columns", sa.JSON, nullable=True))


def downgrade() -> None:
    op.drop_column("staging_jobs", "bytes_columns")
