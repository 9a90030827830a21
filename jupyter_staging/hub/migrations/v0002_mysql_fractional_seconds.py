"""MySQL / MariaDB: operation times with microseconds (``DATETIME(6)``), so operations started within
one second keep their order. Other databases already keep fractions of a second.

Revision ID: hub0002
Revises: hub0001
"""

from __future__ import annotations

from alembic import op

from jupyter_staging.engine.migrate import mysql_fractional_seconds

revision = "hub0002"
down_revision = "hub0001"
branch_labels = None
depends_on = None

#: (table, column, nullable) of every time column.
TIME_COLUMNS = [("operations", "started", False), ("operations", "finished", True)]


def upgrade() -> None:
    mysql_fractional_seconds(op.get_bind(), TIME_COLUMNS, fsp=6)


def downgrade() -> None:
    mysql_fractional_seconds(op.get_bind(), TIME_COLUMNS, fsp=0)
