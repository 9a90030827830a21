"""The kernel side: ``%stage`` and ``jupyter_staging.stage()`` in a kernel a real Jupyter server started, the
in-process fallback, and the mapping of notebook paths to the server's root."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

from jupyter_staging.errors import (
    DestinationNotWritable,
    JobNotFound,
    PathNotAllowed,
    SourceNotFound,
    StagingError,
    error_classes,
)
from jupyter_staging.kernel import api
from jupyter_staging.kernel.backends import (
    Backend,
    LocalBackend,
    ServerBackend,
    error_from_response,
    server_base_url,
)
from jupyter_staging.kernel.discovery import ENV_ROOT, ENV_TOKEN, ENV_URL
from jupyter_staging.kernel.job import Job
from jupyter_staging.kernel.paths import to_root_relative
from tests.helpers.data import KEPLER, SPITZER
from tests.helpers.net import free_port
from tests.helpers.servers import RangeHTTPServer
from tests.helpers.space import read_only_folder

WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
API = "api/v1/staging"


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any staging or JupyterHub settings, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JUPYTER_STAGING_", "JUPYTERHUB_"))}
    env.update(extra)
    return env


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- a real Jupyter server in a subprocess, and a kernel it started ---------------------------------------


@dataclass
class JupyterServer:
    """A ``jupyter server`` subprocess with the staging extension, its token and private Jupyter dirs."""

    process: subprocess.Popen[bytes]
    url: str
    token: str
    root: Path
    runtime_dir: Path
    log_path: Path
    kernel_pids: list[int] = field(default_factory=list)

    #: requests' ``verify`` for the tests' own calls (False for a test server's self-signed certificate).
    verify: str | bool = True

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        headers = {"Authorization": f"token {self.token}"}
        kwargs.setdefault("verify", self.verify)
        return requests.request(method, self.url + path, headers=headers, timeout=30, **kwargs)

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"jupyter server exited with {self.process.returncode}:\n{self.log()}")
            try:
                if self.request("GET", "api/status").status_code == 200:
                    return
            except requests.ConnectionError:
                pass
            time.sleep(0.2)
        pytest.fail(f"jupyter server did not answer within {timeout} s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:]

    def stop(self) -> None:
        import psutil

        try:
            children = psutil.Process(self.process.pid).children(recursive=True)
        except psutil.Error:
            children = []
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        leftovers = children + [psutil.Process(pid) for pid in self.kernel_pids if psutil.pid_exists(pid)]
        for child in leftovers:
            try:
                child.kill()
            except psutil.Error:
                pass


@contextmanager
def running_jupyter_server(
    base: Path, *options: str, scheme: str = "http", verify: bool = True
) -> Iterator[JupyterServer]:
    """``python -m jupyter server`` on a free loopback port, with a random token, its root, database and
    Jupyter data/runtime/config dirs under ``base``, and ``options`` (``--certfile=...`` for https);
    stopped (with its kernels) at the end."""
    base.mkdir(exist_ok=True)
    root = base / "root"
    dirs = {name: base / name for name in ("data", "runtime", "config")}
    for folder in (root, *dirs.values()):
        folder.mkdir()
    (dirs["config"] / "jupyter_server_config.json").write_text(
        json.dumps({"ServerApp": {"jpserver_extensions": {"jupyter_staging": True}}})
    )
    token = secrets.token_hex(16)
    port = free_port()
    env = clean_env(
        JUPYTER_DATA_DIR=str(dirs["data"]),
        JUPYTER_RUNTIME_DIR=str(dirs["runtime"]),
        JUPYTER_CONFIG_DIR=str(dirs["config"]),
        PYTHONUNBUFFERED="1",
    )
    log_path = base / "server.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "jupyter",
                "server",
                "--allow-root",
                "--no-browser",
                "--ip=127.0.0.1",
                f"--port={port}",
                "--ServerApp.port_retries=0",
                f"--IdentityProvider.token={token}",
                f"--ServerApp.root_dir={root}",
                f"--StagingApp.db_url=sqlite:///{base / 'jobs.sqlite'}",
                *options,
            ],
            env=env,
            cwd=base,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    server = JupyterServer(
        process, f"{scheme}://127.0.0.1:{port}/", token, root.resolve(), dirs["runtime"], log_path
    )
    server.verify = verify
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def jupyter_server(tmp_path_factory):
    """A Jupyter server with the staging extension (:func:`running_jupyter_server`) for the module."""
    with running_jupyter_server(tmp_path_factory.mktemp("jupyter-server")) as server:
        yield server


class Kernel:
    """A kernel the server started, driven over ZMQ with its connection file."""

    def __init__(self, server: JupyterServer, kernel_id: str) -> None:
        from jupyter_client import BlockingKernelClient

        self.server = server
        self.id = kernel_id
        connection_file = server.runtime_dir / f"kernel-{kernel_id}.json"
        deadline = time.monotonic() + 30
        while not connection_file.exists():
            if time.monotonic() > deadline:
                pytest.fail(f"no connection file {connection_file}:\n{server.log()}")
            time.sleep(0.1)
        self.client = BlockingKernelClient(connection_file=str(connection_file))
        self.client.load_connection_file()
        self.client.start_channels()
        # wait_for_ready() gives up as soon as the heartbeat has not beaten yet; a busy machine needs longer.
        while True:
            try:
                self.client.wait_for_ready(timeout=60)
                break
            except RuntimeError:
                if time.monotonic() > deadline + 60:
                    raise
                time.sleep(0.5)

    widgets_shown: list[str]

    def run(self, code: str, timeout: float = 120) -> tuple[dict[str, Any], str]:
        """Execute ``code``; returns the reply content and everything shown (streams, results, errors)."""
        shown: list[str] = []
        self.widgets_shown = []

        def on_output(msg: dict[str, Any]) -> None:
            kind, content = msg["msg_type"], msg["content"]
            if kind == "stream":
                shown.append(content["text"])
            elif kind in ("execute_result", "display_data"):
                if WIDGET_MIME in content["data"]:
                    self.widgets_shown.append(content["data"][WIDGET_MIME]["model_id"])
                else:
                    shown.append(content["data"].get("text/plain", "") + "\n")
            elif kind == "error":
                shown.append("\n".join(content["traceback"]) + "\n")

        reply = self.client.execute_interactive(code, output_hook=on_output, timeout=timeout)
        return reply["content"], "".join(shown)

    def ok(self, code: str, timeout: float = 120) -> str:
        """Execute ``code``, which must succeed; returns what it showed."""
        reply, shown = self.run(code, timeout)
        assert reply["status"] == "ok", shown
        return shown

    def close(self) -> None:
        self.client.stop_channels()
        try:
            self.server.request("DELETE", f"api/kernels/{self.id}")
        except requests.RequestException:
            pass


@pytest.fixture(scope="module")
def kernel(jupyter_server):
    """A python3 kernel started through the server's API in its root, with ``%load_ext jupyter_staging``."""
    response = jupyter_server.request("POST", "api/kernels", json={"name": "python3", "path": ""})
    assert response.status_code == 201, response.text
    kernel = Kernel(jupyter_server, response.json()["id"])
    try:
        pid = int(kernel.ok("import os\nprint(os.getpid())").strip())
        jupyter_server.kernel_pids.append(pid)
        kernel.ok("%load_ext jupyter_staging")
        yield kernel
    finally:
        kernel.close()


def server_job(server: JupyterServer, job_id: str) -> dict[str, Any]:
    response = server.request("GET", f"{API}/jobs/{job_id}")
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


# -- 1. in a kernel the server started ----------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_kernel_finds_its_server_with_no_configuration(kernel, jupyter_server):
    shown = kernel.ok(
        "from jupyter_staging.kernel import api\n"
        "backend = api.default_backend()\n"
        "print(type(backend).__name__, backend.url, backend.root_dir, os.getcwd())"
    )
    kind, url, root, cwd = shown.split()
    assert kind == "ServerBackend"
    assert url == jupyter_server.url
    assert Path(root) == Path(cwd) == jupyter_server.root


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_stage_votable_to_parquet_and_read_it_in_the_kernel(kernel, jupyter_server):
    shown = kernel.ok(
        f"job = %stage {SPITZER} --to-parquet --wait\n"
        "print(job.id, job.state, len(job.to_pandas()), len(job.paths))"
    )
    assert len(kernel.widgets_shown) == 1  # the live job widget
    job_id, state, rows, parts = shown.split()
    assert (state, int(rows)) == ("succeeded", 224)
    assert int(parts) >= 1

    # The job ran in the server: its API lists it, converted, under the default staging folder.
    listed = jupyter_server.request("GET", f"{API}/jobs").json()["jobs"]
    assert job_id in [job["id"] for job in listed]
    job = server_job(jupyter_server, job_id)
    assert job["state"] == "succeeded" and job["convert"]["format"] == "parquet"
    assert job["destination"].startswith("staging/")
    chunks = jupyter_server.request("GET", f"{API}/jobs/{job_id}/chunks").json()["chunks"]
    assert all(c["path"].endswith(".parquet") for c in chunks)
    assert (jupyter_server.root / job["destination"] / chunks[0]["path"]).is_file()

    kernel.ok("%stage jobs")
    assert len(kernel.widgets_shown) == 1  # the live jobs table
    listing = kernel.ok("import jupyter_staging\nprint(jupyter_staging.list_jobs())")
    assert job_id in listing and "succeeded" in listing


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_relative_destination_is_relative_to_the_notebook_folder(kernel, jupyter_server):
    (jupyter_server.root / "analysis").mkdir()
    shown = kernel.ok(
        textwrap.dedent(
            f"""
            home = os.getcwd()
            os.chdir("analysis")
            try:
                job = %stage {KEPLER} kepler --wait
            finally:
                os.chdir(home)
            print(job.id, job.state, job.destination)
            """
        )
    )
    job_id, state, destination = shown.split()
    assert state == "succeeded"
    assert Path(destination) == jupyter_server.root / "analysis" / "kepler"
    assert server_job(jupyter_server, job_id)["destination"] == "analysis/kepler"
    staged = jupyter_server.root / "analysis" / "kepler" / KEPLER.name
    assert sha256(staged) == sha256(KEPLER)

    # Cancelling a finished job returns it unchanged; {expressions} are expanded as in any line magic.
    shown = kernel.ok("same = %stage cancel {job.id}\nprint(same.id, same.state)")
    assert shown.split() == [job_id, "succeeded"]
    assert staged.is_file()


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_pause_and_resume_a_download_from_the_kernel(kernel, jupyter_server, range_server):
    shutil.copy(KEPLER, range_server.root / KEPLER.name)
    range_server.throttle_bytes_per_s = 300_000  # about 5 s for the whole file
    url = range_server.url(KEPLER.name)
    shown = kernel.ok(
        textwrap.dedent(
            f"""
            import time
            job = %stage {url} downloads/kepler
            while job.refresh().progress["bytes_done"] == 0 and not job.done:
                time.sleep(0.05)
            paused = %stage pause {{job.id}}
            print(job.id, paused.state)
            """
        )
    )
    job_id, state = shown.split()
    assert state == "paused"
    done = server_job(jupyter_server, job_id)["progress"]["bytes_done"]
    assert 0 < done < KEPLER.stat().st_size
    time.sleep(0.5)
    assert server_job(jupyter_server, job_id)["progress"]["bytes_done"] == done

    range_server.throttle_bytes_per_s = 0
    shown = kernel.ok(
        "resumed = %stage resume {job.id}\nprint(resumed.state, resumed.wait(timeout=60).state)"
    )
    assert shown.split()[1] == "succeeded"
    assert shown.split()[0] in ("queued", "running", "succeeded")
    staged = jupyter_server.root / "downloads" / "kepler" / KEPLER.name
    assert sha256(staged) == sha256(KEPLER)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_staging_errors_are_one_line_not_tracebacks(kernel, jupyter_server):
    reply, shown = kernel.run("%stage /no/such/kplr.fits")
    assert reply["status"] == "error"
    assert "staging error [source_not_found]" in shown
    assert "Traceback" not in shown and "File " not in shown

    reply, shown = kernel.run(f"%stage {KEPLER} ../outside-the-root")
    assert reply["status"] == "error"
    assert "staging error [path_not_allowed]" in shown and "Traceback" not in shown

    reply, shown = kernel.run("%stage resume 00000000-no-such-job")
    assert reply["status"] == "error"
    assert "staging error [job_not_found]" in shown and "Traceback" not in shown


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_job_shown_live_is_not_shown_again_as_a_stale_table(kernel, jupyter_server):
    # `%stage URL` on its own line: the live widget, and no result table of the job as it was when submitted
    # (that table said "queued" for good, under a widget that said "succeeded").
    shown = kernel.ok(f"%stage {SPITZER} live-once")
    assert len(kernel.widgets_shown) == 1
    assert "<Job" not in shown
    # The same with the job's name on the cell's last line, as the demo notebook has it.
    shown = kernel.ok(f"job = %stage {KEPLER} live-twice --wait\njob")
    assert len(kernel.widgets_shown) == 1
    assert "<Job" not in shown
    # In a later cell the job shows as a table, as it is now.
    shown = kernel.ok("job")
    assert not kernel.widgets_shown and "<Job" in shown and "succeeded" in shown
    assert "succeeded" in kernel.ok("_")


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_server_backend_maps_api_errors_to_staging_errors(jupyter_server):
    backend = ServerBackend(jupyter_server.url, jupyter_server.token, jupyter_server.root)
    try:
        assert backend.probe()
        with pytest.raises(SourceNotFound) as info:
            backend.create({"source": "/no/such/file.fits"})
        assert (info.value.code, info.value.status) == ("source_not_found", 400)
        with pytest.raises(JobNotFound) as info:
            backend.get("no-such-job")
        assert (info.value.code, info.value.status) == ("job_not_found", 404)
        # The class a job run in-process raises, not only the status's generic one (409: InvalidState).
        with read_only_folder(jupyter_server.root / "shared"), pytest.raises(DestinationNotWritable) as ro:
            backend.create({"source": str(KEPLER), "destination": "shared/kepler"})
        assert (ro.value.code, ro.value.status) == ("destination_not_writable", 409)
    finally:
        backend.close()
    wrong = ServerBackend(jupyter_server.url, "not-the-token", jupyter_server.root)
    assert not wrong.probe()
    wrong.close()


@pytest.mark.parametrize(
    ("pasted", "base", "token"),
    [
        ("http://127.0.0.1:8888/lab?token=abc", "http://127.0.0.1:8888/", "abc"),
        ("http://127.0.0.1:8888/tree?token=abc#x", "http://127.0.0.1:8888/", "abc"),
        ("https://hub.example.org/user/ada/lab", "https://hub.example.org/user/ada/", None),
        ("https://hub.example.org/user/ada", "https://hub.example.org/user/ada/", None),
        ("https://hub.example.org/user/lab/", "https://hub.example.org/user/lab/", None),
        ("http://127.0.0.1:8888", "http://127.0.0.1:8888/", None),
        ("http://127.0.0.1:8888/lab/tree/analysis/run.ipynb?token=abc", "http://127.0.0.1:8888/", "abc"),
        ("http://127.0.0.1:8888/lab/workspaces/auto-x?reset", "http://127.0.0.1:8888/", None),
        ("http://127.0.0.1:8888/tree/analysis/", "http://127.0.0.1:8888/", None),
        ("https://hub.example.org/user/lab/lab/tree/x.ipynb", "https://hub.example.org/user/lab/", None),
        ("https://hub.example.org/user/ada/gpu/notebooks/x", "https://hub.example.org/user/ada/gpu/", None),
        ("http://ada:s3cret@[::1]:8888/lab", "http://[::1]:8888/", None),
    ],
)
def test_server_base_url_of_what_a_user_pastes(pasted: str, base: str, token: str | None) -> None:
    assert server_base_url(pasted) == (base, token)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_the_url_jupyter_prints_is_taken_and_its_token_never_shown(jupyter_server, tmp_path):
    """``use_server("http://127.0.0.1:8888/lab?token=...")``: the token is taken from the URL, and neither
    the backend's repr nor an error quotes it. (The API path was appended after the query: every call got
    the lab's HTML page and a JSONDecodeError traceback, and errors quoted the token.)"""
    printed = f"{jupyter_server.url}lab?token={jupyter_server.token}"
    backend = ServerBackend(printed, None, jupyter_server.root)
    try:
        assert backend.probe() and isinstance(backend.list_jobs(), list)
        assert jupyter_server.token not in repr(backend)
    finally:
        backend.close()
    gone = ServerBackend(f"http://ada:s3cret@127.0.0.1:{free_port()}/lab?token=secret123", None, tmp_path)
    with pytest.raises(StagingError) as info:
        gone.list_jobs()
    assert info.value.code == "server_unreachable"
    for secret in ("secret123", "s3cret"):
        assert secret not in info.value.message and secret not in repr(gone)
    # A server that answers a page, not JSON: one line with a stable code, no JSONDecodeError.
    page = tmp_path / "site" / API / "jobs"
    page.parent.mkdir(parents=True)
    page.write_text("<html><body>Sign in</body></html>")
    with RangeHTTPServer(tmp_path / "site") as site:
        proxy = ServerBackend(site.url(""), "t", tmp_path)
        with pytest.raises(StagingError) as info:
            proxy.list_jobs()
    assert info.value.code == "bad_response" and "not JSON" in info.value.message


def test_every_error_code_from_the_wire_is_its_own_class():
    """Each code of :mod:`jupyter_staging.errors` comes back from an API answer as the class that raises it
    in-process, so ``except InsufficientSpace`` works whether the server or the kernel ran the job."""
    for cls in error_classes():
        error = error_from_response(cls.status, {"code": cls.code, "message": "said by the server"})
        assert type(error) is cls and (error.code, error.status, error.message) == (
            cls.code,
            cls.status,
            "said by the server",
        )
    assert type(error_from_response(409, {"code": "some_new_code"})).__name__ == "InvalidState"


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_discovery_uses_the_exported_environment_and_skips_a_bad_server(
    jupyter_server, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.startswith(("JUPYTER_STAGING_", "JUPYTERHUB_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))
    monkeypatch.setenv(ENV_URL, jupyter_server.url)
    monkeypatch.setenv(ENV_TOKEN, jupyter_server.token)
    monkeypatch.setenv(ENV_ROOT, str(jupyter_server.root))
    api.reset_backend()
    try:
        backend = api.default_backend()
        assert isinstance(backend, ServerBackend) and backend.root_dir == jupyter_server.root
        assert api.default_backend() is backend  # chosen once per process

        monkeypatch.setenv(ENV_TOKEN, "not-the-token")
        api.reset_backend()
        backend = api.default_backend()
        assert isinstance(backend, LocalBackend) and backend.root_dir == tmp_path.resolve()
    finally:
        api.reset_backend()


# -- 2. no server: the same engine in-process ---------------------------------------------------------------


FALLBACK_SCRIPT = """
import json, sys
import jupyter_staging
from jupyter_staging.kernel import api
from jupyter_staging.errors import StagingError

job = jupyter_staging.stage(sys.argv[1], "kepler-lc", to_parquet=True, chunk_rows=5000, wait=True)
table = job.to_arrow()
out = {
    "backend": type(api.default_backend()).__name__,
    "state": job.state,
    "rows": len(job.to_pandas()),
    "unit": table.schema.field("PDCSAP_FLUX").metadata[b"unit"].decode(),
    "chunk_rows": [c["rows"] for c in job.chunks],
    "destination": str(job.destination),
}
try:
    jupyter_staging.stage("missing.fits")
except StagingError as err:
    out["error"] = [err.code, err.message]
print(json.dumps(out))
"""


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_script_without_a_server_stages_in_process(tmp_path):
    env = clean_env(JUPYTER_DATA_DIR=str(tmp_path / "data"), JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"))
    done = subprocess.run(
        [sys.executable, "-c", FALLBACK_SCRIPT, str(KEPLER)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=150,
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["backend"] == "LocalBackend" and out["state"] == "succeeded"
    assert out["rows"] == 14280
    assert out["unit"] == "e-/s"
    assert out["chunk_rows"] == [5000, 5000, 4280]
    assert Path(out["destination"]) == tmp_path.resolve() / "kepler-lc"
    assert (tmp_path / "data" / "jupyter_staging" / "local-jobs.sqlite").is_file()
    code, message = out["error"]
    assert code == "source_not_found" and str(tmp_path.resolve() / "missing.fits") in message


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_magic_in_plain_ipython_expands_variables_and_returns_the_job(shell, tmp_path):
    shell.user_ns["src"] = str(KEPLER)
    result = shell.run_cell("job = %stage $src lightcurves --to-parquet --chunk-rows 5000 --wait\njob")
    assert result.success, result.error_in_exec
    job = shell.user_ns["job"]
    assert isinstance(job, Job) and job.state == "succeeded"
    assert job.destination == tmp_path.resolve() / "lightcurves"
    assert [p.name for p in job.paths] == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    assert job.dataset().count_rows() == 14280
    assert sum(o["rows"] for o in job.manifest()["objects"]) == 14280

    listed = shell.run_cell("%stage jobs").result
    assert [j.id for j in listed] == [job.id]
    assert job.id in listed._repr_html_() and "succeeded" in repr(listed)

    result = shell.run_cell("%stage missing.fits")
    assert "staging error [source_not_found]" in str(result.error_in_exec)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_job_without_parquet_output_says_so(shell):
    job = api.stage(KEPLER, "plain", wait=True)
    assert job.paths == [job.destination / KEPLER.name]
    with pytest.raises(StagingError) as info:
        job.to_arrow()
    assert info.value.code == "no_parquet_output"


# -- 3. notebook paths to server paths ---------------------------------------------------------------------


def test_relative_destination_maps_from_the_notebook_folder(tmp_path):
    root = tmp_path / "root"
    (root / "project" / "notebooks").mkdir(parents=True)
    cwd = root / "project" / "notebooks"
    assert to_root_relative("kepler", root, cwd) == "project/notebooks/kepler"
    assert to_root_relative("../data/kepler", root, cwd) == "project/data/kepler"
    assert to_root_relative("./a/b/", root, cwd) == "project/notebooks/a/b"
    assert to_root_relative(root / "staging" / "x", root, cwd) == "staging/x"
    assert to_root_relative(".", root, root) == "."


def test_destination_outside_the_root_is_refused(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    for destination, cwd in (("../elsewhere", root), ("/etc/staging", root), ("../../x", root / "sub")):
        with pytest.raises(PathNotAllowed) as info:
            to_root_relative(destination, root, cwd)
        assert info.value.code == "path_not_allowed"
        assert "outside the staging root" in info.value.message


def test_root_reached_through_a_symlink_maps_to_the_same_folder(tmp_path):
    real = tmp_path / "real-root"
    (real / "sub").mkdir(parents=True)
    link = tmp_path / "link-root"
    link.symlink_to(real)
    assert to_root_relative("out", real, link / "sub") == "sub/out"
    assert to_root_relative("out", link, real / "sub") == "sub/out"


def test_stage_sends_absolute_sources_and_root_relative_destinations(tmp_path, monkeypatch):
    sent: list[dict[str, Any]] = []

    class Recorder(Backend):
        root_dir = tmp_path

        def create(self, body: dict[str, Any]) -> dict[str, Any]:
            sent.append(body)
            return {"id": "1", "name": "x", "state": "queued", "destination": body.get("destination", "")}

    monkeypatch.setattr(api, "_backend", Recorder())
    (tmp_path / "nb").mkdir()
    monkeypatch.chdir(tmp_path / "nb")
    api.stage("data/table.csv", "out", to_parquet=True, chunk_rows=10)
    api.stage("https://example.org/a.fits")
    api.stage("s3://bucket/prefix/", "../s3")
    assert sent[0]["source"] == str(tmp_path / "nb" / "data" / "table.csv")
    assert sent[0]["destination"] == "nb/out"
    assert sent[0]["convert"] == {"format": "parquet", "compression": "zstd", "chunk_rows": 10}
    assert sent[1] == {"source": "https://example.org/a.fits", "cleanup_policy": "retain"}
    assert (sent[2]["source"], sent[2]["destination"]) == ("s3://bucket/prefix/", "s3")
    with pytest.raises(PathNotAllowed):
        api.stage("a.fits", "../../outside")
    with pytest.raises(StagingError) as info:
        api.stage("a.fits", chunk_rows=10)
    assert info.value.code == "invalid_request"
