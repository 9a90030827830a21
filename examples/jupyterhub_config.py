# JupyterHub with the jupyter_staging hub service, all on one machine (127.0.0.1).
#
#   jupyterhub -f examples/jupyterhub_config.py
#
# Users alice and bob (and the admin "admin") log in with the password below; the service is at
# http://127.0.0.1:8000/services/staging/. The archive, the users' homes and the state live under
# $JUPYTER_STAGING_DEMO_DIR (default /tmp/jupyter-staging-demo); the tests in tests/hub run this file
# with their own folders and ports through the environment variables read here.
#
# DummyAuthenticator and SimpleLocalProcessSpawner are for demos and tests only: on a real hub use your
# authenticator and a spawner that runs each server as its user (docs/hub.md).
import os
import sys
from pathlib import Path

c = get_config()  # noqa: F821 - provided by JupyterHub when it loads this file

demo = Path(os.environ.get("JUPYTER_STAGING_DEMO_DIR", "/tmp/jupyter-staging-demo"))  # noqa: S108 - a demo
archive = os.environ.get("JUPYTER_STAGING_ARCHIVE", str(demo / "archive"))
homes = demo / "homes"
service_dir = demo / "service"
hub_port = int(os.environ.get("JUPYTER_STAGING_HUB_PORT", "8000"))
service_port = int(os.environ.get("JUPYTER_STAGING_SERVICE_PORT", "10101"))
for folder in (demo, Path(archive), homes, service_dir):
    folder.mkdir(parents=True, exist_ok=True)

# -- the hub -----------------------------------------------------------------------------------
c.JupyterHub.bind_url = f"http://127.0.0.1:{hub_port}"
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.authenticator_class = "dummy"
c.DummyAuthenticator.password = os.environ.get("JUPYTER_STAGING_DEMO_PASSWORD", "staging-demo")
c.Authenticator.allowed_users = {"alice", "bob"}
c.Authenticator.admin_users = {"admin"}

# Users' servers: the venv's Python, so they have jupyter_staging (its server extension is enabled on
# install); --allow-root only because demo and test machines often run as root.
c.JupyterHub.spawner_class = "simple"
c.SimpleLocalProcessSpawner.home_dir_template = str(homes / "{username}")
c.Spawner.cmd = [sys.executable, "-m", "jupyterhub.singleuser"]
c.Spawner.args = ["--allow-root"]

# -- the staging service -------------------------------------------------------------------------
# https://jupyterhub.readthedocs.io/en/stable/reference/services.html
c.JupyterHub.services = [
    {
        "name": "staging",
        "url": f"http://127.0.0.1:{service_port}",
        "command": [
            sys.executable,
            "-m",
            "jupyter_staging.hub.app",
            f"--shared-roots={archive}",
            f"--user-area-template={homes}/{{username}}/staging",
            f"--server-root-template={homes}/{{username}}",
            f"--proxy-url=http://127.0.0.1:{hub_port}",
        ]
        + os.environ.get("JUPYTER_STAGING_SERVICE_ARGS", "").split(),  # fmt: skip
        "cwd": str(service_dir),  # its SQLite database, log file and cookie secret
        # Passed to the service; the hub adds the JUPYTERHUB_* variables itself. Secrets (the database
        # URL with its password) go here from the hub's own environment, never on the command line.
        "environment": {
            "PYTHONUNBUFFERED": "1",
            **{k: v for k, v in os.environ.items() if k == "JUPYTER_STAGING_HUB_DB_URL"},
        },
        # Admin-operated: users are not asked to authorise it at login.
        "oauth_no_confirm": True,
        # Scopes a login token for the service may carry: the admin scope, for those who hold it.
        "oauth_client_allowed_scopes": ["custom:jupyter-staging:admin"],
        "display": True,
    }
]

# A custom scope for the service's admins (https://jupyterhub.readthedocs.io/en/stable/rbac/scopes.html#custom-scopes).
c.JupyterHub.custom_scopes = {
    "custom:jupyter-staging:admin": {
        "description": "Stage data for any user and read every staging record and the staging log.",
    },
}

# Roles (https://jupyterhub.readthedocs.io/en/stable/rbac/roles.html).
c.JupyterHub.load_roles = [
    {
        # Every user may use the service (and keeps the default "self" permissions).
        "name": "user",
        "scopes": ["self", "access:services!service=staging"],
    },
    {
        "name": "staging-admin",
        "description": "Acts for any user in the staging service.",
        "scopes": ["custom:jupyter-staging:admin", "access:services!service=staging"],
        "users": ["admin"],
    },
    {
        # The service's own token: see users' servers, start them, and have the hub make each user a
        # short-lived token for that user's own server alone (the service's token never goes there).
        "name": "staging-service",
        "scopes": ["read:users:name", "read:servers", "servers", "tokens"],
        "services": ["staging"],
    },
]
