"""Fixtures shared by the engine's tests."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from jupyter_staging.engine import processes
from jupyter_staging.engine.manager import StagingManager
from jupyter_staging.engine.models import CreateJob
from jupyter_staging.engine.store import utcnow
from tests.helpers.data import KEPLER, SPITZER, TESS
from tests.helpers.managers import manager_for

if TYPE_CHECKING:
    from distributed import LocalCluster


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """``tmp_path / "root"``, made here: the folder a test's jobs stage into."""
    folder = tmp_path / "root"
    folder.mkdir(exist_ok=True)
    return folder


@pytest.fixture
def manager(root: Path, tmp_path: Path) -> Iterator[StagingManager]:
    """A started :class:`StagingManager` on :func:`root` with its own SQLite job database, stopped
    afterwards."""
    mgr = manager_for(tmp_path)
    yield mgr
    mgr.stop()


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    """Copies of the mission data the tests may change (``../shared/data`` is never modified)."""
    folder = tmp_path / "archive"
    folder.mkdir()
    for src in (KEPLER, SPITZER, TESS):
        shutil.copyfile(src, folder / src.name)
    return folder


#: Seconds between two renewals in these tests: a lease lasts LEASE_INTERVALS of them.
INTERVAL = 0.5


@pytest.fixture
def on_host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """``on_host(name, kind="server", interval=INTERVAL)``: an unstarted manager of runner kind ``kind``
    (``"kernel"``: a kernel's in-process engine), renewing its leases every ``interval`` seconds, on
    ``tmp_path / "root"`` and the shared job database, whose runner id names host ``name`` (only
    :func:`~jupyter_staging.engine.processes.host_name` is replaced, while it is made); all are stopped at
    the end."""
    (tmp_path / "root").mkdir(exist_ok=True)
    made: list[StagingManager] = []

    def make(name: str, kind: str = "server", interval: float = INTERVAL) -> StagingManager:
        with monkeypatch.context() as patch:
            patch.setattr(processes, "host_name", lambda: name)
            mgr = StagingManager(
                tmp_path / "root",
                db_url=f"sqlite:///{tmp_path / 'jobs.sqlite'}",
                sweep_interval=0,
                heartbeat_interval=interval,
                runner_kind=kind,
            )
        made.append(mgr)
        return mgr

    yield make
    for mgr in made:
        mgr.stop()


def job_of_a_dead_host(tmp_path: Path, on_host, lease_left: timedelta) -> str:
    """The id of a job that a server of host ``podA``, killed, was running: a 1 KiB file to copy into
    ``out``, the job ``running`` under podA's runner with its lease ending ``lease_left`` from now (negative:
    expired). podA's manager was never started."""
    (tmp_path / "archive").mkdir(exist_ok=True)
    (tmp_path / "archive" / "survey.bin").write_bytes(os.urandom(1024))
    a = on_host("podA")
    job, _ = a.create(
        CreateJob(source=str(tmp_path / "archive" / "survey.bin"), destination="out"), start=False
    )
    a.store.set_job_fields(job.id, state="running", lease_expires_at=utcnow() + lease_left)
    return job.id


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    """A Dask ``LocalCluster`` on 127.0.0.1 for the tests of one module (``tests.helpers.dask.local_cluster``;
    distributed imported only by the modules that ask for it)."""
    from tests.helpers.dask import local_cluster

    with local_cluster() as made:
        yield made
