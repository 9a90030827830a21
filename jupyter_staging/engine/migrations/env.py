"""Alembic's ``env.py``: run the revisions on the connection that
:func:`jupyter_staging.engine.migrate.upgrade_database` hands over in ``config.attributes``, recording the
revision in that database's own version table (Alembic cookbook: "Sharing a Connection across one or more
programmatic migration commands")."""

from __future__ import annotations

from alembic import context

config = context.config
context.configure(
    connection=config.attributes["connection"],
    version_table=config.attributes["version_table"],
    target_metadata=None,
)
with context.begin_transaction():
    context.run_migrations()
