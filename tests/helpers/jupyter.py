"""A real Jupyter server in its own process, for tests that kill, restart or share it with a kernel.

Everything binds to 127.0.0.1. The server's config, data and runtime folders live in a private folder so
nothing of the user's is touched; ``--allow-root`` is passed because test machines run as root.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import requests

from tests.helpers.net import free_port


class JupyterServerProcess:
    """``jupyter server`` with the staging extension, rooted at ``root_dir``.

    ``start()`` / ``kill()`` (SIGKILL) / ``stop()`` (SIGTERM) can be called repeatedly; the port, token,
    database and folders stay the same across restarts, as they would for a real user.
    """

    def __init__(self, root_dir: Path, state_dir: Path, *, extra_args: list[str] | None = None) -> None:
        self.root_dir = root_dir
        self.state_dir = state_dir
        self.port = free_port()
        self.token = secrets.token_hex(16)
        self.extra_args = extra_args or []
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = state_dir / "server.log"
        self.env = dict(os.environ)
        for var in list(self.env):
            if var.startswith(("JUPYTER_STAGING_", "JUPYTERHUB_")):
                del self.env[var]
        self.env.update(
            JUPYTER_CONFIG_DIR=str(state_dir / "config"),
            JUPYTER_DATA_DIR=str(state_dir / "data"),
            JUPYTER_RUNTIME_DIR=str(state_dir / "runtime"),
            IPYTHONDIR=str(state_dir / "ipython"),
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    @property
    def api(self) -> str:
        return f"{self.url}api/v1/staging/"

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"token {self.token}"}

    #: The module run with ``python -m``: ``jupyter_server`` here, ``jupyterlab`` for the UI tests.
    app_module = "jupyter_server"

    def command(self) -> list[str]:
        """The server's command line."""
        return [
            sys.executable,
            "-m",
            self.app_module,
            "--allow-root",
            "--no-browser",
            "--ip=127.0.0.1",
            f"--port={self.port}",
            "--port-retries=0",
            f"--IdentityProvider.token={self.token}",
            f"--ServerApp.root_dir={self.root_dir}",
            f"--StagingApp.db_url=sqlite:///{self.state_dir / 'jobs.sqlite'}",
            *self.extra_args,
        ]

    def prepare(self) -> None:
        """Hook run before each start (subclasses write settings, link extensions)."""

    def start(self, timeout: float = 60.0) -> None:
        """Start the server and wait until ``/api/status`` answers. Raises RuntimeError with the end of
        its log if it exits or does not answer within ``timeout`` seconds."""
        self.root_dir.mkdir(parents=True, exist_ok=True)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.prepare()
        args = self.command()
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.env,
            cwd=self.root_dir,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"jupyter server exited: {self.log_path.read_text()[-3000:]}")
            try:
                if requests.get(f"{self.url}api/status", headers=self.headers, timeout=2).ok:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"jupyter server did not start: {self.log_path.read_text()[-3000:]}")

    def kill(self) -> None:
        """SIGKILL: the process dies mid-work, as in a crash or an OOM kill."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)

    # -- API helpers ----------------------------------------------------------------------------------

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", 30)
        return requests.request(method, self.api + path, headers=self.headers, **kwargs)

    def create_job(self, body: dict[str, Any]) -> dict[str, Any]:
        response = self.request("POST", "jobs", json=body)
        assert response.status_code == 201, response.text
        return response.json()  # type: ignore[no-any-return]

    def job(self, job_id: str) -> dict[str, Any]:
        response = self.request("GET", f"jobs/{job_id}")
        assert response.status_code == 200, response.text
        return response.json()  # type: ignore[no-any-return]

    def wait_for(self, job_id: str, predicate: Any, timeout: float = 120.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            job = self.job(job_id)
            if predicate(job):
                return job
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting on job: {job}")
            time.sleep(0.1)


class ServerOn(JupyterServerProcess):
    """A Jupyter server whose job database is ``db_url`` (given once: the option takes one value)."""

    def __init__(self, root_dir: Path, state_dir: Path, db_url: str) -> None:
        super().__init__(root_dir, state_dir)
        self.db_url = db_url

    def command(self) -> list[str]:
        args = [a for a in super().command() if not a.startswith("--StagingApp.db_url=")]
        return [*args, f"--StagingApp.db_url={self.db_url}"]


def server_config(tmp_path: Path, **staging: object) -> dict:
    """pytest-jupyter config: only our extension, strict authentication, the job database in ``tmp_path``,
    and any further ``StagingApp`` settings."""
    return {
        "ServerApp": {
            "jpserver_extensions": {"jupyter_staging": True},
            "allow_unauthenticated_access": False,
        },
        "StagingApp": {"db_url": f"sqlite:///{tmp_path / 'staging-jobs.sqlite'}", **staging},
    }
