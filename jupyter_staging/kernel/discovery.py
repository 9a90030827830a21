"""Finding the Jupyter server that started this kernel, so jobs run there and survive kernel restarts.

:func:`discover` tries, in order, the first candidate server that answers ``GET api/v1/staging/jobs?limit=1``
with 200 within :data:`~jupyter_staging.kernel.backends.PROBE_TIMEOUT` seconds:

1. ``JUPYTER_STAGING_SERVER_URL`` with ``JUPYTER_STAGING_SERVER_TOKEN`` (else ``JUPYTERHUB_API_TOKEN``)
   and ``JUPYTER_STAGING_ROOT_DIR`` — what the server extension exports to the kernels it starts (with
   ``JUPYTER_STAGING_SERVER_CERT``, its own certificate, when it serves https);
2. the JupyterHub single-user server (``JUPYTERHUB_SERVICE_URL``, or ``JUPYTERHUB_SERVICE_PREFIX``
   matched against the running servers) with ``JUPYTERHUB_API_TOKEN``;
3. the running Jupyter server whose process is this process's parent;

else 4. a :class:`~jupyter_staging.kernel.backends.LocalBackend` on the current working directory.
The environment is read when :func:`discover` is called, never at import.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from typing import Any

from jupyter_staging.kernel.backends import Backend, LocalBackend, ServerBackend

__all__ = ["ENV_CERT", "ENV_ROOT", "ENV_TOKEN", "ENV_URL", "candidates", "discover", "running_servers"]

#: Environment variables the server extension exports to the kernels it starts (``server/app.py``).
ENV_URL = "JUPYTER_STAGING_SERVER_URL"
ENV_TOKEN = "JUPYTER_STAGING_SERVER_TOKEN"  # noqa: S105 - a variable name, not a secret
ENV_ROOT = "JUPYTER_STAGING_ROOT_DIR"
#: The PEM file of the server's own certificate, when it serves https (its ``ServerApp.certfile``).
ENV_CERT = "JUPYTER_STAGING_SERVER_CERT"


def discover() -> Backend:
    """The backend of the first candidate server that answers (see the module docstring), else a new
    :class:`LocalBackend` on the current working directory. Never raises for an unreachable server; when
    there were candidates and none answered, says so once (a ``RuntimeWarning``: jobs then run in this
    process and stop with it, and the server's panel does not show them)."""
    tried, unreadable = [], []
    for url, token, root in candidates():
        server_cert = os.environ.get(ENV_CERT) if url == os.environ.get(ENV_URL) else None
        try:
            backend = ServerBackend(url, token, root, server_cert=server_cert)
        except OSError as exc:  # the server's certificate file cannot be read
            unreadable.append(f"{server_cert} ({exc.strerror or type(exc).__name__})")
            continue
        if backend.probe():
            return backend
        tried.append(backend.url)
        backend.close()
    if tried or unreadable:
        why = [f"no Jupyter server answered at {', '.join(tried)}"] if tried else []
        why += [f"the server's certificate {', '.join(unreadable)} cannot be read"] if unreadable else []
        warnings.warn(
            f"{'; '.join(why)}: staging jobs run in this process (they stop with it, and the server's "
            "Staging panel does not list them); use_server(url, token, server_cert=...) names a server",
            RuntimeWarning,
            stacklevel=2,
        )
    return LocalBackend()


def candidates() -> Iterator[tuple[str, str | None, str]]:
    """Candidate servers as ``(url with base_url, token or None, root_dir as this process sees it)``, in
    the order :func:`discover` probes them."""
    env = os.environ
    hub_token = env.get("JUPYTERHUB_API_TOKEN") or None
    root = env.get(ENV_ROOT) or None
    if env.get(ENV_URL):
        yield env[ENV_URL], env.get(ENV_TOKEN) or hub_token, root or os.getcwd()
    servers = None
    if hub_token and (env.get("JUPYTERHUB_SERVICE_URL") or env.get("JUPYTERHUB_SERVICE_PREFIX")):
        servers = running_servers()
        hub = _hub_candidate(servers, hub_token, root)
        if hub is not None:
            yield hub
    servers = running_servers() if servers is None else servers
    yield from _parent_candidates(servers, hub_token)


def _parent_candidates(
    servers: list[dict[str, Any]], hub_token: str | None
) -> Iterator[tuple[str, str | None, str]]:
    """The running servers whose process is this process's parent (the one that started this kernel)."""
    parent = os.getppid()
    for server in servers:
        if server.get("pid") == parent and server.get("url"):
            yield server["url"], server.get("token") or hub_token, server.get("root_dir") or os.getcwd()


def _hub_candidate(
    servers: list[dict[str, Any]], hub_token: str, root: str | None
) -> tuple[str, str | None, str] | None:
    """The JupyterHub single-user server: ``JUPYTERHUB_SERVICE_URL``, or the running server whose
    base_url is ``JUPYTERHUB_SERVICE_PREFIX``; None when neither names one."""
    env = os.environ
    prefix = env.get("JUPYTERHUB_SERVICE_PREFIX") or ""
    match = next((s for s in servers if prefix and s.get("base_url") == prefix), None) or {}
    url = env.get("JUPYTERHUB_SERVICE_URL") or match.get("url")
    if not url:
        return None
    return url, hub_token, root or match.get("root_dir") or os.path.expanduser("~")


def running_servers() -> list[dict[str, Any]]:
    """The Jupyter servers running for this user (their runtime files: ``url``, ``token``, ``pid``,
    ``root_dir``, ``base_url``...); ``[]`` when none can be listed."""
    try:
        # Deferred: jupyter_server (tornado and the whole server) costs seconds, only paid when discovering.
        from jupyter_server.serverapp import list_running_servers

        return list(list_running_servers())
    except Exception:  # no jupyter_server, or an unreadable runtime dir: no candidates
        return []
