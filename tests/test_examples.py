"""The Zero to JupyterHub values (examples/z2jh-values.yaml) name the same service, scopes and roles as
examples/jupyterhub_config.py, the configuration the hub tests run; no secret is on a command line. The
daskhub values (examples/dask-gateway-values.yaml) name StagingApp settings that exist, run the workers from
the users' image with the users' home mounted as in their servers; neither file holds a secret in clear."""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from traitlets.config import Config
from traitlets.utils.importstring import import_item

from jupyter_staging.engine.executors import Executor
from jupyter_staging.server.app import StagingApp

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


# -- examples/dask-gateway-values.yaml: the daskhub values that run jobs on dask-gateway clusters ------------

#: Keys whose value would be a credential in a Helm values file (dask-gateway's apiToken, cookieSecret,
#: proxyToken; passwords; JupyterHub's secretToken).
SECRET_KEY = re.compile(r"(api_?token|secret_?token|cookie_?secret|proxy_?token|password)$", re.IGNORECASE)
#: A literal that looks like a generated token (``openssl rand -hex 32``) or a URL with a password in it
#: (``...`` and ``<password>`` are placeholders).
SECRET_TEXT = re.compile(r"\b[0-9a-f]{32,}\b|://[^/\s:@]+:(?!\.\.\.@|<)[^/\s@]+@")


@pytest.fixture(scope="module")
def gateway_values() -> dict[str, Any]:
    return yaml.safe_load((EXAMPLES / "dask-gateway-values.yaml").read_text())


def secrets_in_clear(tree: Any, where: str = "") -> list[str]:
    """Where ``tree`` (parsed YAML) holds a literal credential: a non-empty string under a key naming one
    (:data:`SECRET_KEY`; a ``secretKeyRef``, which names a Kubernetes secret, is not one)."""
    found: list[str] = []
    if isinstance(tree, dict):
        for key, value in tree.items():
            path = f"{where}.{key}"
            if SECRET_KEY.search(str(key)) and isinstance(value, str) and value:
                found.append(path)
            found += secrets_in_clear(value, path)
    elif isinstance(tree, list):
        for index, value in enumerate(tree):
            found += secrets_in_clear(value, f"{where}[{index}]")
    return found


def staging_settings(gateway_values: dict[str, Any]) -> dict[str, Any]:
    """The StagingApp settings the values give the users' servers (their ``singleuser.extraFiles`` JSON)."""
    [config_file] = gateway_values["jupyterhub"]["singleuser"]["extraFiles"].values()
    assert config_file["mountPath"].startswith("/etc/jupyter/jupyter_server_config.d/")
    assert config_file["mountPath"].endswith(".json")
    return config_file["data"]["StagingApp"]


def string_pairs(code: str) -> set[tuple[str, str]]:
    """Every ``"key": "value"`` pair of string literals in the dict displays of Python ``code``."""
    pairs: set[tuple[str, str]] = set()
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values, strict=True):
                if isinstance(key, ast.Constant) and isinstance(value, ast.Constant):
                    pairs.add((str(key.value), str(value.value)))
    return pairs


def test_the_dask_values_name_settings_the_server_has(gateway_values):
    settings = staging_settings(gateway_values)
    known = set(StagingApp.class_traits(config=True))
    assert set(settings) <= known, set(settings) - known
    assert issubclass(import_item(settings["executor_class"]), Executor)
    app = StagingApp(config=Config({"StagingApp": settings}))
    for name, value in settings.items():
        if name != "executor_class":
            assert getattr(app, name) == value, name


def test_the_dask_settings_use_the_gateway_the_chart_runs(gateway_values):
    gateway = staging_settings(gateway_values)["dask_gateway"]
    assert set(gateway) <= {"address", "proxy_address", "auth", "cluster_options", "workers"}
    chart = gateway_values["dask-gateway"]["gateway"]
    assert gateway["auth"] == "jupyterhub"
    assert gateway["address"].startswith("http://proxy-public/services/dask-gateway")
    assert gateway["proxy_address"].startswith("gateway://traefik-")
    assert isinstance(gateway["workers"], int) and gateway["workers"] > 0
    [options_code] = chart["extraConfig"].values()
    offered = {m.group(1) for m in re.finditer(r'(?:Integer|Float)\("(\w+)"', options_code)}
    assert set(gateway["cluster_options"]) <= offered, set(gateway["cluster_options"]) - offered


def test_the_dask_config_file_adds_to_the_site_file(values, gateway_values):
    site = values["singleuser"]["extraFiles"]
    dask = gateway_values["jupyterhub"]["singleuser"]["extraFiles"]
    assert not set(site) & set(dask)
    assert {f["mountPath"] for f in site.values()}.isdisjoint(f["mountPath"] for f in dask.values())


def test_the_workers_run_the_users_image(gateway_values):
    users = gateway_values["jupyterhub"]["singleuser"]["image"]
    workers = gateway_values["dask-gateway"]["gateway"]["backend"]["image"]
    assert workers == users


def test_the_workers_mount_the_users_home_where_the_users_server_has_it(values, gateway_values):
    [options_code] = gateway_values["dask-gateway"]["gateway"]["extraConfig"].values()
    pairs = string_pairs(options_code)
    storage = values["singleuser"]["storage"]["static"]
    assert ("claimName", storage["pvcName"]) in pairs
    assert ("mountPath", "/home/jovyan") in pairs
    assert "handler=staging_cluster" in options_code and '"subPath": user.name' in options_code


def test_no_secret_in_clear_in_the_values():
    for name in ("z2jh-values.yaml", "dask-gateway-values.yaml"):
        text = (EXAMPLES / name).read_text()
        assert not secrets_in_clear(yaml.safe_load(text)), name
        assert not SECRET_TEXT.search(text), name
