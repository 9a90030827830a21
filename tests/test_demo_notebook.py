"""The README's first command: ``make demo`` (``scripts/demo.sh``) starts JupyterLab on the demo notebook
and every cell of it runs.

The server is started with exactly the options the script starts JupyterLab with
(``scripts/demo.sh --print-options``), in a private folder, and ``demo/staging-demo.ipynb`` — written by
the same script — is executed with nbclient by a kernel that reaches that server the way a kernel the
server started does (the ``JUPYTER_STAGING_SERVER_*`` variables the extension exports), so every
``%stage`` runs in the demo server under its ``source_roots``.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest
import requests
from nbclient import NotebookClient

from jupyter_staging.kernel.discovery import ENV_ROOT, ENV_TOKEN, ENV_URL
from tests.helpers.data import SHARED_DATA
from tests.helpers.net import free_port
from tests.helpers.servers import stop_process

REPO = Path(__file__).resolve().parents[1]


def demo_options(env: dict[str, str]) -> list[str]:
    """The options ``scripts/demo.sh`` starts JupyterLab with (it also writes the demo notebook)."""
    proc = subprocess.run(
        ["bash", str(REPO / "scripts" / "demo.sh"), "--print-options"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return proc.stdout.splitlines()


@pytest.fixture
def demo_server(tmp_path):
    """JupyterLab started with the demo's options in ``tmp_path``: yields ``(url, token, root)``."""
    root = tmp_path / "demo"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JUPYTER", "JPY_"))}
    env.update(
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        PORT=str(port),
        STAGING_DEMO_ROOT=str(root),
        STAGING_DEMO_DATA=str(SHARED_DATA),
        JUPYTER_CONFIG_DIR=str(tmp_path / "config"),
        JUPYTER_DATA_DIR=str(tmp_path / "data"),
        JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"),
        IPYTHONDIR=str(tmp_path / "ipython"),
    )
    options = demo_options(env)
    assert f"--port={port}" in options and f"--ServerApp.root_dir={root}" in options
    token = secrets.token_hex(16)
    log_path = tmp_path / "lab.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "jupyterlab",
                *options,
                "--port-retries=0",
                f"--IdentityProvider.token={token}",
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
        )
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, log_path.read_text()[-3000:]
            try:
                if requests.get(
                    f"{url}api/status", headers={"Authorization": f"token {token}"}, timeout=2
                ).ok:
                    break
            except requests.RequestException:
                pass
            assert time.monotonic() < deadline, log_path.read_text()[-3000:]
            time.sleep(0.3)
        yield url, token, root
    finally:
        stop_process(proc)


@pytest.mark.slow
def test_demo_notebook_runs_against_the_demo_server(demo_server, monkeypatch):
    url, token, root = demo_server
    headers = {"Authorization": f"token {token}"}
    # JupyterLab opens on the demo notebook, which the script wrote into the root.
    landing = requests.get(url, headers=headers, allow_redirects=False, timeout=10)
    assert landing.headers["Location"].split("?")[0].endswith("/lab/tree/staging-demo.ipynb")
    assert requests.get(f"{url}api/contents/staging-demo.ipynb", headers=headers, timeout=10).ok

    for var, value in ((ENV_URL, url), (ENV_TOKEN, token), (ENV_ROOT, str(root))):
        monkeypatch.setenv(var, value)
    notebook = nbformat.read(root / "staging-demo.ipynb", as_version=4)
    NotebookClient(
        notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(root)}}
    ).execute()

    outputs = "\n".join(
        str(output.get("text", "")) + str(output.get("data", {}).get("text/plain", ""))
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.outputs
    )
    assert "14280 rows" in outputs
    assert "PDCSAP_FLUX" in outputs
    assert 'Unit("electron / s")' in outputs  # job.to_table(): units reach astropy
    jobs = requests.get(f"{url}api/v1/staging/jobs", headers=headers, timeout=10).json()["jobs"]
    assert sorted(job["state"] for job in jobs) == ["succeeded", "succeeded"]
    assert all(job["destination"].startswith("staging/") for job in jobs)
