"""The Zero to JupyterHub values (examples/z2jh-values.yaml) name the same service, scopes and roles as
examples/jupyterhub_config.py, the configuration the hub tests run; no secret is on a command line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from traitlets.config import Config

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture(scope="module")
def hub_config(tmp_path_factory) -> Config:
    """examples/jupyterhub_config.py executed as JupyterHub does (``get_config()`` gives ``c``)."""
    config = Config()
    code = (EXAMPLES / "jupyterhub_config.py").read_text()
    env = {"get_config": lambda: config, "__file__": str(EXAMPLES / "jupyterhub_config.py")}
    demo = tmp_path_factory.mktemp("demo")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("JUPYTER_STAGING_DEMO_DIR", str(demo))
        exec(compile(code, "jupyterhub_config.py", "exec"), env)  # noqa: S102 - our own example file
    return config


@pytest.fixture(scope="module")
def values() -> dict[str, Any]:
    return yaml.safe_load((EXAMPLES / "z2jh-values.yaml").read_text())


def z2jh_custom_scopes(values: dict[str, Any]) -> dict[str, Any]:
    """``c.JupyterHub.custom_scopes`` as the values' ``extraConfig`` snippets set it (the chart has set
    ``c.JupyterHub.services`` from ``hub.services`` before they run)."""
    config = Config()
    config.JupyterHub.services = []
    for snippet in values["hub"]["extraConfig"].values():
        exec(compile(snippet, "extraConfig", "exec"), {"c": config})  # noqa: S102 - our own example file
    return dict(config.JupyterHub.custom_scopes)


def test_the_same_service_with_the_same_oauth_settings(hub_config, values):
    [service] = [s for s in hub_config.JupyterHub.services if s["name"] == "staging"]
    z2jh = values["hub"]["services"]["staging"]
    assert z2jh["command"][:3] == ["python3", "-m", "jupyter_staging.hub.app"]
    assert service["command"][1:3] == ["-m", "jupyter_staging.hub.app"]
    for key in ("oauth_no_confirm", "oauth_client_allowed_scopes"):
        assert z2jh[key] == service[key], key
    flags = {arg.split("=", 1)[0] for arg in service["command"] if arg.startswith("--")}
    z2jh_flags = {arg.split("=", 1)[0] for arg in z2jh["command"] if arg.startswith("--")}
    assert flags <= z2jh_flags, flags - z2jh_flags


def test_the_same_custom_scopes(hub_config, values):
    assert z2jh_custom_scopes(values) == dict(hub_config.JupyterHub.custom_scopes)


def test_the_same_roles_and_scopes(hub_config, values):
    tested = {role["name"]: role for role in hub_config.JupyterHub.load_roles}
    z2jh = values["hub"]["loadRoles"]
    assert set(z2jh) == set(tested)
    for name, role in z2jh.items():
        assert role["scopes"] == tested[name]["scopes"], name
        assert role.get("services", []) == tested[name].get("services", []), name


def test_no_secret_on_a_command_line(values):
    command = " ".join(values["hub"]["services"]["staging"]["command"])
    assert "--db-url" not in command and "password" not in command.lower()
    secret = values["hub"]["extraEnv"]["JUPYTER_STAGING_HUB_DB_URL"]["valueFrom"]["secretKeyRef"]
    assert secret["name"] and secret["key"]


def test_the_secret_reaches_the_service_environment(values, monkeypatch):
    monkeypatch.setenv("JUPYTER_STAGING_HUB_DB_URL", "postgresql+psycopg://staging:s3cret@db/staging")
    config = Config()
    config.JupyterHub.services = [{"name": "staging", "environment": {"PYTHONUNBUFFERED": "1"}}]
    for snippet in values["hub"]["extraConfig"].values():
        exec(compile(snippet, "extraConfig", "exec"), {"c": config})  # noqa: S102 - our own example file
    env = config.JupyterHub.services[0]["environment"]
    assert env["JUPYTER_STAGING_HUB_DB_URL"].endswith("@db/staging")


def test_users_servers_get_an_image_with_the_extension_and_the_archive(values):
    single = values["singleuser"]
    assert single["image"]["name"] and single["image"]["tag"]
    assert single["extraEnv"]["JUPYTER_STAGING_HUB_SERVICE_URL"].endswith("/services/staging/")
    [site] = single["extraFiles"].values()
    assert site["data"]["StagingApp"]["source_roots"] == ["/archive"]
    assert {"mountPath": "/archive", "name": "archive", "readOnly": True} in single["storage"][
        "extraVolumeMounts"
    ]
