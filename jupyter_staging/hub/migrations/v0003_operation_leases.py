"""Leases on running operations, so several service replicas can share one database: ``runner`` (the
replica id of the service process running an operation) and ``lease_expires_at`` (UTC, microseconds on
MySQL / MariaDB too). Rows of earlier releases have neither: a replica takes such a ``running`` row over
at once (those releases had no replicas).

Revision ID: hub0003
Revises: hub0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from jupyter_staging.engine.migrate import mysql_fractional_seconds

revision = "hub0003"
down_revision = "hub0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("operations", sa.Column("runner", sa.String(128), nullable=True))
    op.add_column("operations", sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True))
    mysql_fractional_seconds(op.get_bind(), [("operations", "lease_expires_at", True)], fsp=6)


def downgrade() -> None:
    with op.batch_alter_table("operations") as batch:
        batch.drop_column("lease_expires_at")
        batch.drop_column("runner")
