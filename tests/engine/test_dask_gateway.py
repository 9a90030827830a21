"""Jobs on a cluster made through dask-gateway: ``DaskExecutor(gateway={...})`` against a real
``dask-gateway-server`` started by the test.

The gateway runs as a subprocess on 127.0.0.1 with its ``UnsafeLocalBackend`` (the scheduler and workers of
each cluster are local processes of this user, so they share ``tmp_path`` with the server) and its
``SimpleAuthenticator`` with a password (HTTP Basic, no JupyterHub). The engine runs in this process (a real
:class:`StagingManager`, SQLite in ``tmp_path``); the executor asks the gateway for a new cluster, scales it
to two workers, stages through it, and shuts it down when the manager stops.
"""

from __future__ import annotations

import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask.config
import psutil
import pytest
from dask_gateway import BasicAuth, Gateway

from jupyter_staging.engine.executors import DaskExecutor
from jupyter_staging.engine.manager import StagingManager
from jupyter_staging.engine.models import CreateJob, DescribeJob, JobState
from tests.helpers.data import KEPLER, SPITZER, TESS, sha256, wait_until
from tests.helpers.net import free_port
from tests.helpers.servers import stop_process

FINAL = {JobState.succeeded, JobState.failed, JobState.cancelled, JobState.paused}
USER = "staging-test"

CONFIG = """
c.DaskGateway.address = "127.0.0.1:{api_port}"
c.Proxy.address = "127.0.0.1:{proxy_port}"
c.DaskGateway.backend_class = "dask_gateway_server.backends.local.UnsafeLocalBackend"
c.DaskGateway.authenticator_class = "dask_gateway_server.auth.SimpleAuthenticator"
c.SimpleAuthenticator.password = {password!r}
c.UnsafeLocalBackend.clusters_directory = {clusters!r}
c.LocalClusterConfig.scheduler_cmd = [{python!r}, "-m", "distributed.cli.dask_scheduler"]
c.LocalClusterConfig.worker_cmd = [{python!r}, "-m", "distributed.cli.dask_worker", "--host", "127.0.0.1"]
c.LocalClusterConfig.scheduler_cores = 1
c.LocalClusterConfig.worker_cores = 1
c.LocalClusterConfig.worker_threads = 2
c.LocalClusterConfig.worker_memory = "1 G"
"""


@dataclass
class GatewayServer:
    """A running ``dask-gateway-server``: its process, public HTTP address, scheduler proxy address and
    the password its ``SimpleAuthenticator`` wants."""

    process: subprocess.Popen[bytes]
    address: str
    proxy_address: str
    password: str

    def client(self) -> Gateway:
        """A gateway client logged in as :data:`USER` (close it after use)."""
        return Gateway(self.address, proxy_address=self.proxy_address, auth=BasicAuth(USER, self.password))

    def running_clusters(self) -> list[str]:
        """Names of the clusters the gateway reports pending or running."""
        with self.client() as gateway:
            return [report.name for report in gateway.list_clusters()]


def _healthy(address: str) -> bool:
    try:
        with urllib.request.urlopen(f"{address}/api/health", timeout=2) as response:
            return bool(response.status == 200)
    except (OSError, urllib.error.URLError):
        return False


@pytest.fixture(scope="module")
def gateway_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayServer]:
    """``python -m dask_gateway_server -f <config>``; ready once ``/api/health`` answers 200 through the
    proxy (the proxy and the private API both up)."""
    where = tmp_path_factory.mktemp("gateway")
    api_port, proxy_port = free_port(), free_port()
    password = secrets.token_urlsafe(16)
    config = where / "dask_gateway_config.py"
    config.write_text(
        CONFIG.format(
            api_port=api_port,
            proxy_port=proxy_port,
            password=password,
            clusters=str(where / "clusters"),
            python=sys.executable,
        )
    )
    log = (where / "gateway.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "dask_gateway_server", "-f", str(config)],
        cwd=where,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    server = GatewayServer(
        process, f"http://127.0.0.1:{proxy_port}", f"gateway://127.0.0.1:{proxy_port}", password
    )
    try:
        wait_until(
            lambda: process.poll() is not None or _healthy(server.address), timeout=60, what="dask-gateway"
        )
        assert process.poll() is None, (where / "gateway.log").read_text()
        yield server
    finally:
        stop_process(process, timeout=30)
        log.close()


def run(manager: StagingManager, request: CreateJob, timeout: float = 300.0) -> DescribeJob:
    job, _ = manager.create(request)
    return wait_until(lambda: _final(manager, job.id), timeout=timeout, what=f"job {job.id} to end")


def _final(manager: StagingManager, job_id: str) -> DescribeJob | None:
    job = manager.get(job_id)
    return job if job.state in FINAL else None


def cluster_processes(pid: int, *, all_of_them: bool = False) -> list[psutil.Process]:
    """The schedulers and workers the gateway ``pid`` runs: its descendants started as ``python -m
    distributed.cli...`` (a worker's nanny; its worker process not counted), or with ``all_of_them``, every
    descendant but the gateway's proxy."""
    processes = []
    for child in psutil.Process(pid).children(recursive=True):
        try:
            command = " ".join(child.cmdline())
        except psutil.NoSuchProcess:
            continue
        if "dask-gateway-proxy" not in command and (all_of_them or "distributed.cli" in command):
            processes.append(child)
    return processes


def listening_addresses(pid: int) -> set[str]:
    """IP addresses that ``pid`` and its descendants listen on (TCP)."""
    addresses: set[str] = set()
    parent = psutil.Process(pid)
    for process in [parent, *parent.children(recursive=True)]:
        try:
            connections = process.net_connections(kind="inet")
        except psutil.NoSuchProcess:
            continue
        addresses.update(c.laddr.ip for c in connections if c.status == psutil.CONN_LISTEN)
    return addresses


def gateway_options(server: GatewayServer, auth: str) -> dict[str, Any]:
    """The executor's ``gateway`` option: the same Basic credentials as a ``BasicAuth`` object, or as the
    string ``"basic"`` with the user and password from dask's config (``gateway.auth.kwargs``, what
    ``DASK_GATEWAY__AUTH__KWARGS__PASSWORD`` sets in a deployment)."""
    return {
        "address": server.address,
        "proxy_address": server.proxy_address,
        "auth": BasicAuth(USER, server.password) if auth == "object" else "basic",
        "cluster_options": {},
        "workers": 2,
    }


# dask-gateway 2026.3.0: ``Gateway.close()`` is not idempotent with distributed >= 2023.6 (its ``loop``
# property raises once the loop stopped), so a gateway client closed by ``GatewayCluster.close()`` (the
# executor's shutdown) or by ``with`` raises again from ``__del__``; harmless, and nothing to fix here.
GATEWAY_DEL = "ignore:Exception ignored in. <function Gateway.__del__:pytest.PytestUnraisableExceptionWarning"


def assert_staged(manager: StagingManager, job: DescribeJob, root: Path, manifest: dict[str, str]) -> None:
    """The job succeeded through the workers' probe, and every file landed with its source's sha256."""
    assert job.state == JobState.succeeded, job.error
    log_text = "\n".join(line["message"] for line in manager.job_log(job.id))
    assert "Dask workers see the destination folder" in log_text
    for name, path in manifest.items():
        assert sha256(root / "inputs" / name / Path(path).name) == sha256(Path(path))
    objects = {o["path"]: o["sha256"] for o in manager.manifest(job.id)["objects"]}
    assert sorted(objects.values()) == sorted(sha256(Path(p)) for p in manifest.values())


@pytest.mark.filterwarnings(GATEWAY_DEL)
@pytest.mark.parametrize("auth", ["object", "basic"])
def test_a_manifest_runs_on_a_gateway_cluster_that_stop_shuts_down(tmp_path, gateway_server, auth):
    manifest = {"kepler": str(KEPLER), "tess": str(TESS), "catalog": str(SPITZER)}
    root = tmp_path / "root"
    root.mkdir()
    assert gateway_server.running_clusters() == []
    assert cluster_processes(gateway_server.process.pid, all_of_them=True) == []
    credentials = {"gateway.auth.kwargs": {"username": USER, "password": gateway_server.password}}
    with dask.config.set(credentials if auth == "basic" else {}):
        started = time.monotonic()
        manager = StagingManager(
            root,
            db_url=f"sqlite:///{root}/.jobs.db",
            executor_class=DaskExecutor,
            executor_options={"gateway": gateway_options(gateway_server, auth)},
        )
        manager.start()
        try:
            assert isinstance(manager.executor, DaskExecutor)
            client = manager.executor.client()  # waits for the cluster the executor asked for at start
            made = time.monotonic() - started
            client.wait_for_workers(2, timeout=120)
            workers = time.monotonic() - started
            job = run(manager, CreateJob(manifest=manifest, destination="inputs"))
            done = time.monotonic() - started
            assert_staged(manager, job, root, manifest)
            [cluster] = gateway_server.running_clusters()
            assert client.scheduler.address == f"{gateway_server.proxy_address}/{cluster}"
            assert len(client.scheduler_info()["workers"]) == 2
            assert len(cluster_processes(gateway_server.process.pid)) == 3  # a scheduler, two workers
            assert listening_addresses(gateway_server.process.pid) == {"127.0.0.1"}
        finally:
            stopping = time.monotonic()
            manager.stop(wait=True)
    assert gateway_server.running_clusters() == []
    wait_until(
        lambda: not cluster_processes(gateway_server.process.pid, all_of_them=True),
        timeout=60,
        what="the cluster's processes to exit",
    )
    print(
        f"\ngateway ({auth}): cluster made {made:.1f} s, 2 workers {workers:.1f} s, job done {done:.1f} s "
        f"after start; processes gone {time.monotonic() - stopping:.1f} s after stop"
    )


@pytest.mark.filterwarnings(GATEWAY_DEL)
def test_a_gateway_refusing_the_credentials_fails_the_job_without_leaking_them(tmp_path, gateway_server):
    root = tmp_path / "root"
    root.mkdir()
    wrong = secrets.token_urlsafe(16)
    options = {
        "address": gateway_server.address,
        "proxy_address": gateway_server.proxy_address,
        "auth": BasicAuth(USER, wrong),
    }
    manager = StagingManager(
        root,
        db_url=f"sqlite:///{root}/.jobs.db",
        executor_class=DaskExecutor,
        executor_options={"gateway": options},
    )
    manager.start()
    try:
        job = run(manager, CreateJob(source=str(KEPLER), destination="lc"), timeout=120)
        assert job.state == JobState.failed
        assert job.error is not None and job.error.code == "cluster_unavailable"
        assert job.progress.bytes_done == 0
        said = job.error.message + "\n".join(line["message"] for line in manager.job_log(job.id))
        assert wrong not in said and gateway_server.password not in said
        assert not [p for p in root.rglob("*") if p.is_file() and p.name.startswith("kplr")]
    finally:
        manager.stop(wait=True)
    assert gateway_server.running_clusters() == []
