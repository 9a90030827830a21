"""MySQL / MariaDB: times with microseconds (``DATETIME(6)``).

``DateTime`` is ``DATETIME`` there, which keeps whole seconds: jobs created within one second had the same
``created_at``, so "newest first" and the list cursor fell back on the id alone. Other databases already
keep fractions of a second and are left alone.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

from alembic import op

from jupyter_staging.engine.migrate import mysql_fractional_seconds

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

#: (table, column, nullable) of every time column.
TIME_COLUMNS = [
    ("staging_jobs", "created_at", False),
    ("staging_jobs", "updated_at", False),
    ("staging_jobs", "started_at", True),
    ("staging_jobs", "finished_at", True),
    ("staging_jobs", "expires_at", True),
    ("staging_events", "time", False),
]


def upgrade() -> None:
    mysql_fractional_seconds(op.get_bind(), TIME_COLUMNS, fsp=6)


def downgrade() -> None:
    mysql_fractional_seconds(op.get_bind(), TIME_COLUMNS, fsp=0)
