"""Replicas of the staging service for tests: several ``python -m jupyter_staging.hub.app`` processes,
started by the test (not by the hub), over one operations database, all registered as the one external
service ``staging`` of a :class:`~tests.helpers.hub.HubProcess`.

The hub's proxy routes ``/services/staging/`` to the replica listening on the hub's ``service_port``;
the others are called on their own port (same prefix, same tokens: each replica checks tokens with the
Hub API, as a replica behind a load balancer does).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import requests

from tests.helpers.hub import SERVICE_PREFIX, HubProcess


def external_service_config(token: str) -> str:
    """Lines of ``jupyterhub_config.py`` that turn the example's managed ``staging`` service into an
    external one (the hub does not start it) with the API token ``token``."""
    return (
        "_staging = c.JupyterHub.services[0]\n"
        "for _key in ('command', 'cwd', 'environment'):\n"
        "    _staging.pop(_key, None)\n"
        f"_staging['api_token'] = {token!r}\n"
    )


class ServiceReplica:
    """One replica ``name`` listening on ``port``, its working folder (operations log, cookie secret)
    ``workdir / name``, its records in ``db_url``; leases of ``lease_seconds`` seconds."""

    def __init__(
        self,
        hub: HubProcess,
        name: str,
        port: int,
        *,
        token: str,
        db_url: str,
        lease_seconds: float,
        concurrency: int = 4,
    ) -> None:
        self.hub = hub
        self.name = name
        self.port = port
        self.token = token
        self.db_url = db_url
        self.lease_seconds = lease_seconds
        self.concurrency = concurrency
        self.dir = hub.workdir / "replicas" / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{SERVICE_PREFIX}"

    @property
    def oplog(self) -> Path:
        return self.dir / "jupyter_staging_hub.log"

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("JUPYTERHUB_", "JUPYTER_STAGING_"))}
        env.update(
            JUPYTERHUB_API_TOKEN=self.token,
            JUPYTERHUB_API_URL=f"http://127.0.0.1:{self.hub.hub_port}/hub/api",
            JUPYTERHUB_SERVICE_NAME="staging",
            JUPYTERHUB_SERVICE_PREFIX=SERVICE_PREFIX,
            JUPYTERHUB_SERVICE_URL=f"http://127.0.0.1:{self.port}",
            JUPYTERHUB_CLIENT_ID="service-staging",
            JUPYTERHUB_BASE_URL="/",
            JUPYTER_STAGING_HUB_DB_URL=self.db_url,
            PYTHONUNBUFFERED="1",
        )
        return env

    def start(self) -> None:
        """Start the process (see :meth:`wait_ready`)."""
        homes = self.hub.homes
        args = [
            f"--shared-roots={self.hub.archive}",
            f"--user-area-template={homes}/{{username}}/staging",
            f"--server-root-template={homes}/{{username}}",
            f"--proxy-url={self.hub.url}",
            f"--replica-id={self.name}",
            f"--lease-seconds={self.lease_seconds}",
            f"--concurrency={self.concurrency}",
        ]
        log = open(self.dir / "service.log", "ab")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "jupyter_staging.hub.app", *args],
            cwd=self.dir,
            env=self._env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()

    def wait_ready(self, token: str, timeout: float = 60.0) -> None:
        """Wait until the replica answers ``GET api/operations`` with ``token`` (a user's)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                raise RuntimeError(f"replica {self.name} exited:\n{self.log_tail()}")
            try:
                if self.api("GET", "api/operations", token=token, timeout=5).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"replica {self.name} did not answer in {timeout} s:\n{self.log_tail()}")

    def stop(self) -> None:
        """SIGTERM, then wait for the exit (SIGKILL after 30 s)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()
        self.proc = None

    def kill(self) -> None:
        """SIGKILL: the replica dies at once, leaving its running operations behind."""
        if self.proc is not None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None

    def api(self, method: str, path: str, *, token: str, **kwargs: Any) -> requests.Response:
        """Call this replica (``path`` relative to the service prefix) with ``token``."""
        kwargs.setdefault("timeout", 120)
        headers = {"Authorization": f"token {token}"}
        return requests.request(method, self.url + path, headers=headers, **kwargs)

    def final_log_lines(self) -> list[dict[str, Any]]:
        """Lines of the operations log that record an operation's end (status not ``running``)."""
        if not self.oplog.exists():
            return []
        lines = [json.loads(line) for line in self.oplog.read_text().splitlines() if line.strip()]
        return [line for line in lines if line.get("status") not in (None, "running")]

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = (self.dir / "service.log").read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


def new_service_token() -> str:
    """A fresh API token for the external service."""
    return secrets.token_hex(16)
