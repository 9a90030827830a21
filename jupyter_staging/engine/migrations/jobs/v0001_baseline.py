"""Baseline: the job tables as release 0.1.0 created them (``create_all``, before migrations existed).

A database made by 0.1.0 already has them: only missing tables and indexes are created, so such a
database is adopted as it is and later revisions apply to it.

Revision ID: 0001
Revises: (none)
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from jupyter_staging.engine.migrate import create_missing

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _tables() -> list[sa.Table]:
    meta = sa.MetaData()
    jobs = sa.Table(
        "staging_jobs",
        meta,
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("owner", sa.String(255), nullable=False, index=True),
        sa.Column("root", sa.Text, nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("entries", sa.JSON, nullable=True),
        sa.Column("sealed", sa.Text, nullable=True),
        sa.Column("destination", sa.Text, nullable=False),
        sa.Column("method", sa.String(32), nullable=False),
        sa.Column("convert", sa.JSON, nullable=True),
        sa.Column("state", sa.String(16), nullable=False, index=True),
        sa.Column("requested", sa.String(16), nullable=True),
        sa.Column("runner", sa.String(255), nullable=True),
        sa.Column("bytes_done", sa.BigInteger, nullable=False),
        sa.Column("bytes_total", sa.BigInteger, nullable=True),
        sa.Column("chunks_done", sa.Integer, nullable=False),
        sa.Column("chunks_total", sa.Integer, nullable=True),
        sa.Column("rows_done", sa.BigInteger, nullable=False),
        sa.Column("error_code", sa.String(64), nullable=True),
        sa.Column("error_message", sa.Text, nullable=True),
        sa.Column("cleanup_policy", sa.String(32), nullable=False),
        sa.Column("idempotency_key", sa.String(255), nullable=True, index=True),
        sa.Column("ttl_seconds", sa.Integer, nullable=True),
        sa.Column("resume", sa.JSON, nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
    )
    chunks = sa.Table(
        "staging_chunks",
        meta,
        sa.Column("id", sa.String(48), primary_key=True),
        sa.Column(
            "job_id",
            sa.String(36),
            sa.ForeignKey("staging_jobs.id", ondelete="CASCADE"),
            nullable=False,
            index=True,
        ),
        sa.Column("index", sa.Integer, nullable=False),
        sa.Column("path", sa.Text, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("rows", sa.BigInteger, nullable=True),
        sa.Column("bytes", sa.BigInteger, nullable=True),
        sa.Column("sha256", sa.String(64), nullable=True),
        sa.Column("content_type", sa.String(128), nullable=True),
        sa.Column("entry", sa.String(128), nullable=True),
        sa.Column("error_code", sa.String(64), nullable=True),
        sa.Column("error_message", sa.Text, nullable=True),
    )
    events = sa.Table(
        "staging_events",
        meta,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column(
            "job_id",
            sa.String(36),
            sa.ForeignKey("staging_jobs.id", ondelete="CASCADE"),
            nullable=False,
            index=True,
        ),
        sa.Column("time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("level", sa.String(16), nullable=False),
        sa.Column("message", sa.Text, nullable=False),
    )
    return [jobs, chunks, events]


def upgrade() -> None:
    create_missing(op.get_bind(), _tables())


def downgrade() -> None:
    for table in reversed(_tables()):
        op.drop_table(table.name)
