"""The JupyterHub service of jupyter_staging: shared-storage copies into every user's area.

``jupyter-staging-hub`` (:class:`jupyter_staging.hub.app.StagingHub`) runs as a JupyterHub managed service.
It copies, links or streams files from the site's shared storage into a user's area on the authenticated
user's behalf, records every operation in a database and a rotating log file, and serves a page at the
service's root. See ``docs/hub.md`` for the ``jupyterhub_config.py`` and Zero-to-JupyterHub set-up.

Nothing is imported here, so ``import jupyter_staging.hub`` stays cheap.
"""
