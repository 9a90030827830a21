"""A kernel of a Jupyter server that serves https finds it, and a kernel that finds no server says so.

The extension exports ``https://127.0.0.1:PORT/`` and its certificate file to the kernels it starts; the
kernel trusts exactly that certificate, whatever host it names (here ``jupyter.example``, a self-signed
certificate made by ``openssl`` for the test). Before, the URL said ``http`` and the kernel ran every job
in-process, silently: the server's API and panel never listed them.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from jupyter_staging.kernel import api, discovery
from jupyter_staging.kernel.backends import LocalBackend, ServerBackend
from tests.helpers.data import KEPLER
from tests.helpers.net import free_port
from tests.kernel.test_kernel import Kernel, running_jupyter_server

pytestmark = pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")


def self_signed(folder: Path, name: str) -> tuple[Path, Path]:
    """A self-signed certificate for ``jupyter.example`` (not 127.0.0.1) and its key, made by openssl."""
    cert, key = folder / f"{name}.pem", folder / f"{name}.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
         "/CN=jupyter.example", "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_kernel_of_an_https_server_stages_through_it(tmp_path, monkeypatch):
    cert, key = self_signed(tmp_path, "server")
    other, _ = self_signed(tmp_path, "other")
    options = (f"--certfile={cert}", f"--keyfile={key}")
    with running_jupyter_server(tmp_path / "srv", *options, scheme="https", verify=False) as server:
        response = server.request("POST", "api/kernels", json={"name": "python3", "path": ""})
        assert response.status_code == 201, response.text
        kernel = Kernel(server, response.json()["id"])
        try:
            shown = kernel.ok(
                "import warnings\n"
                "warnings.simplefilter('error', RuntimeWarning)\n"
                "from jupyter_staging.kernel import api\n"
                "backend = api.default_backend()\n"
                "print(type(backend).__name__, backend.url)\n"
                "%load_ext jupyter_staging\n"
                f"job = %stage {KEPLER} kepler --wait\n"
                "print(job.id, job.state)"
            )
        finally:
            kernel.close()
        listed = [j["id"] for j in server.request("GET", "api/v1/staging/jobs").json()["jobs"]]
        # use_server() of the URL Jupyter prints, with the certificate given, and with the one the server
        # gave its kernels when the URL is that server's.
        printed = f"{server.url}lab?token={server.token}"
        assert api.use_server(printed, server_cert=cert).list_jobs()
        monkeypatch.setenv(discovery.ENV_URL, server.url)
        monkeypatch.setenv(discovery.ENV_CERT, str(cert))
        assert api.use_server(printed).list_jobs()
        api.reset_backend()
        # The kernel trusts that certificate only: pinned to another one, of the same name, the server is
        # refused, even when requests' CA bundle (REQUESTS_CA_BUNDLE) vouches for the server's.
        for pem, bundle, answers in ((cert, None, True), (other, None, False), (other, cert, False)):
            if bundle is not None:
                monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(bundle))
            backend = ServerBackend(server.url, server.token, server.root, server_cert=str(pem))
            assert backend.probe() is answers, (pem.name, bundle)
            backend.close()
    kind, url, job_id, state = shown.split()
    assert (kind, url, state) == ("ServerBackend", server.url, "succeeded")
    assert server.url.startswith("https://127.0.0.1:")
    assert job_id in listed  # the server ran it


def test_no_server_answering_is_said_once_and_jobs_run_here(tmp_path, monkeypatch):
    """Candidates that do not answer: a ``RuntimeWarning`` naming them (without a token), then a local
    backend."""
    url = f"http://127.0.0.1:{free_port()}/"
    monkeypatch.setenv(discovery.ENV_URL, url)
    monkeypatch.setenv(discovery.ENV_TOKEN, "secret123")
    monkeypatch.setenv(discovery.ENV_ROOT, str(tmp_path))
    monkeypatch.setattr(discovery, "running_servers", list)  # no other server of this machine's user
    monkeypatch.chdir(tmp_path)
    with pytest.warns(RuntimeWarning, match="no Jupyter server answered at") as caught:
        backend = discovery.discover()
    try:
        assert isinstance(backend, LocalBackend)
        [warning] = caught
        assert url in str(warning.message) and "secret123" not in str(warning.message)
    finally:
        backend.close()
        api.reset_backend()
    # A certificate the kernel cannot read is named as such, not as a server that did not answer.
    monkeypatch.setenv(discovery.ENV_URL, url.replace("http:", "https:"))
    monkeypatch.setenv(discovery.ENV_CERT, str(tmp_path / "missing.pem"))
    with pytest.warns(RuntimeWarning, match=r"the server's certificate .*missing\.pem \(No such file"):
        discovery.discover().close()
