"""Alembic's environment for the project's databases (``env.py``); each database has its own folder of
revisions (``jobs/`` here, ``jupyter_staging/hub/migrations/`` for the hub service's operations)."""
