"""The ``hub`` and ``hub service`` checks: the JupyterHub API answers (and accepts
``JUPYTERHUB_API_TOKEN``); the staging service answers at its URL through the hub's proxy."""

from __future__ import annotations

import os
from urllib.parse import urljoin, urlsplit

import requests

from jupyter_staging.cli.model import ENV_HUB_SERVICE_URL, FAIL, OK, SKIP, WARN, Check, DoctorSettings
from jupyter_staging.clouds.http import describe_error
from jupyter_staging.safety.redact import redact_url

HUB = "hub"
SERVICE = "hub service"
NO_ROUTE_FIX = (
    "check the service's name and url in c.JupyterHub.services (docs/hub.md) and the URL's "
    "prefix (/services/<name>/)"
)


def check_hub(settings: DoctorSettings) -> Check:
    """The hub's REST API answers ``GET <api>/``; with ``JUPYTERHUB_API_TOKEN``, ``GET <api>/user``."""
    api = settings.hub_api_url
    if not api:
        return Check(
            HUB,
            SKIP,
            "no JupyterHub configured (JUPYTERHUB_API_URL is unset and no --hub-url)",
            "to check a hub: --hub-url http://hub.example.org/ (run inside a single-user server, "
            "JUPYTERHUB_API_URL is set for you)",
        )
    api = api.rstrip("/")
    shown = redact_url(api)
    try:
        r = requests.get(f"{api}/", timeout=settings.timeout)
        version = r.json().get("version") if r.status_code == 200 else None
    except requests.RequestException as exc:
        return Check(
            HUB,
            FAIL,
            f"cannot reach the JupyterHub API at {shown}: {describe_error(exc)}",
            "check --hub-url / JUPYTERHUB_API_URL (host, port and base URL) and that the hub is running",
        )
    except ValueError:
        version = None
    if not version:
        return Check(
            HUB,
            FAIL,
            f"{shown}/ answered {r.status_code} but is not JupyterHub's REST API",
            "--hub-url is the hub's public URL (e.g. http://hub:8000/); JUPYTERHUB_API_URL ends in /hub/api",
        )
    token = os.environ.get("JUPYTERHUB_API_TOKEN")
    if not token:
        return Check(HUB, OK, f"JupyterHub {version} answers at {shown} (no JUPYTERHUB_API_TOKEN to check)")
    return check_token(api, version, token, settings.timeout)


def check_token(api: str, version: str, token: str, timeout: float) -> Check:
    """JupyterHub ``version``'s API at ``api`` accepts ``token`` (``GET <api>/user``, ``timeout`` s)."""
    shown = redact_url(api)
    try:
        r = requests.get(f"{api}/user", headers={"Authorization": f"token {token}"}, timeout=timeout)
    except requests.RequestException as exc:
        return Check(
            HUB,
            FAIL,
            f"JupyterHub {version} at {shown} stopped answering: {describe_error(exc)}",
            "check the hub's log",
        )
    if r.status_code in (401, 403):
        return Check(
            HUB,
            FAIL,
            f"JupyterHub {version} at {shown} refused JUPYTERHUB_API_TOKEN ({r.status_code}): revoked, "
            "expired or from another hub",
            "use a current token: restart the server from the hub, or create one at "
            f"{redact_url(api.removesuffix('/api'))}/token",
        )
    if r.status_code != 200:
        return Check(
            HUB,
            WARN,
            f"JupyterHub {version} at {shown} answered {r.status_code} to GET /user with the token",
            "check the hub's log",
        )
    model = r.json()
    who = f"{model.get('kind', 'user')} {model.get('name', '?')}"
    return Check(HUB, OK, f"JupyterHub {version} answers at {shown}; JUPYTERHUB_API_TOKEN is {who}'s")


def check_hub_service(settings: DoctorSettings) -> Check:
    """The hub's staging service answers at its URL (through the hub's proxy)."""
    url = settings.hub_service_url
    if not url:
        return Check(
            SERVICE,
            SKIP,
            "no staging service URL given (--hub-service-url or " + ENV_HUB_SERVICE_URL + ")",
            "to check the hub service: --hub-service-url http://hub.example.org/services/staging/",
        )
    shown = redact_url(url)
    headers = {}
    token = os.environ.get("JUPYTERHUB_API_TOKEN")
    if token:
        headers["Authorization"] = f"token {token}"
    try:
        r = requests.get(url, headers=headers, timeout=settings.timeout, allow_redirects=False)
    except requests.RequestException as exc:
        return Check(
            SERVICE,
            FAIL,
            f"cannot reach the staging service at {shown}: {describe_error(exc)}",
            "check the URL (the hub's address plus /services/<name>/) and that the hub is running",
        )
    if r.status_code == 200:
        return Check(SERVICE, OK, f"the staging service at {shown} answers")
    if r.status_code in (301, 302, 303, 307):
        return _redirected(url, r.headers.get("Location", ""))
    if r.status_code == 404:
        return Check(
            SERVICE,
            FAIL,
            f"nothing answers at {shown} (404): the hub's proxy has no route for it",
            NO_ROUTE_FIX,
        )
    if r.status_code in (502, 503, 504):
        return Check(
            SERVICE,
            FAIL,
            f"the hub's proxy could not reach the staging service at {shown} ({r.status_code})",
            "start the service (jupyter-staging-hub) or check the hub's log for why it stopped",
        )
    return Check(SERVICE, WARN, f"the staging service at {shown} answered {r.status_code}", "check its log")


def _redirected(url: str, location_header: str) -> Check:
    """What a redirect from the staging service's ``url`` to ``location_header`` means."""
    shown = redact_url(url)
    location = urljoin(url, location_header)
    if "/oauth2/authorize" in urlsplit(location).path:
        return Check(SERVICE, OK, f"the staging service at {shown} answers (it sends visitors to log in)")
    if urlsplit(location).path.endswith("/hub" + urlsplit(url).path):
        # The proxy's default route: the hub got the request and sends it to its own pages.
        return Check(
            SERVICE,
            FAIL,
            f"no service answers at {shown}: the hub's proxy has no route for it (the hub "
            "redirected it to itself)",
            NO_ROUTE_FIX + "; is jupyter-staging-hub running?",
        )
    return Check(
        SERVICE,
        WARN,
        f"the staging service at {shown} redirects to {redact_url(location)}",
        "give the URL the redirect points to, or check the service's configuration",
    )
