"""Chunks: ``mtime_ns``, the modification time of a chunk's local file when the job published it.

The manifest recorded each file's time only at the job's end, and a file published by a run before a
restart got the time of the end: a file the user edited in between was taken for the job's. A re-run
(which keeps a staged file the user changed) and the cleanup (which removes only what the job left as it
left it) now read the time recorded with the chunk. Chunks recorded before this revision have none; their
job's manifest is read as before.

The column is only added: a server of the release before still reads and writes the chunks (it leaves the
column empty), so servers sharing one database may be upgraded one by one.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlite3

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

CHUNKS = "staging_chunks"


def upgrade() -> None:
    # Kept by a downgrade on an older SQLite: empty (the downgrade emptied it; the release before writes
    # none), so taken as it is.
    if "mtime_ns" not in {c["name"] for c in sa.inspect(op.get_bind()).get_columns(CHUNKS)}:
        op.add_column(CHUNKS, sa.Column("mtime_ns", sa.BigInteger, nullable=True))


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "sqlite" or sqlite3.sqlite_version_info >= (3, 35, 5):
        op.drop_column(CHUNKS, "mtime_ns")
    else:  # an older SQLite would rebuild the table (migration 0004): kept, emptied, unread before
        bind.execute(sa.table(CHUNKS, sa.column("mtime_ns", sa.BigInteger)).update().values(mtime_ns=None))
