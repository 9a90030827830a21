"""Baseline: the hub service's ``operations`` table as release 0.1.0 created it (``create_all``).

A database made by 0.1.0 already has it: only what is missing is created, so such a database is adopted
as it is and later revisions apply to it.

Revision ID: hub0001
Revises: (none)
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from jupyter_staging.engine.migrate import create_missing

revision = "hub0001"
down_revision = None
branch_labels = None
depends_on = None


def _operations() -> sa.Table:
    return sa.Table(
        "operations",
        sa.MetaData(),
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("user", sa.String(255), nullable=False, index=True),
        sa.Column("actor", sa.String(255), nullable=False),
        sa.Column("method", sa.String(32), nullable=False, index=True),
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("target", sa.Text, nullable=True),
        sa.Column("status", sa.String(16), nullable=False, index=True),
        sa.Column("error_code", sa.String(64), nullable=True),
        sa.Column("error_reason", sa.Text, nullable=True),
        sa.Column("bytes", sa.BigInteger, nullable=True),
        sa.Column("sha256", sa.String(64), nullable=True),
        sa.Column("job_id", sa.String(128), nullable=True),
        sa.Column("started", sa.DateTime(timezone=True), nullable=False, index=True),
        sa.Column("finished", sa.DateTime(timezone=True), nullable=True),
    )


def upgrade() -> None:
    create_missing(op.get_bind(), [_operations()])


def downgrade() -> None:
    op.drop_table("operations")
