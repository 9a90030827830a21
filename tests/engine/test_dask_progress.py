"""Progress of a job on Dask counts each task's work once (issue 12's progress audit): a task Dask runs
again (after an error, or a worker lost) starts from zero, and what its earlier try reported is taken back;
events of another run of the job are not counted.

A real :class:`LocalCluster` (two worker processes, 127.0.0.1) runs the tasks of a real
:class:`StagingManager`; the file comes from the Range HTTP server of tests/helpers/servers.py, which cuts
every body short 1,000 bytes before its end until the task's first try gives up, or states a wrong
``Repr-Digest`` (RFC 9530) for it, an error a task is not run again for.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from distributed import LocalCluster

from jupyter_staging.engine.manager import StagingManager
from jupyter_staging.engine.models import CreateJob, JobState
from jupyter_staging.engine.taskoutcomes import TaskFailed, on_worker
from jupyter_staging.errors import ChecksumMismatch, SourceNotFound, TransferFailed
from jupyter_staging.sources.base import MAX_RESUMES
from tests.helpers.dask import dask_manager
from tests.helpers.servers import RangeHTTPServer

SIZE = 1024 * 1024


@pytest.fixture
def manager(tmp_path: Path, cluster: LocalCluster) -> Iterator[StagingManager]:
    root = tmp_path / "root"
    with dask_manager(
        root, cluster.scheduler_address, db_url=f"sqlite:///{tmp_path}/jobs.db", sweep_interval=0
    ) as made:
        yield made


@pytest.fixture
def www(tmp_path: Path) -> Path:
    folder = tmp_path / "www"
    folder.mkdir()
    (folder / "lightcurve.fits").write_bytes(os.urandom(SIZE))
    return folder


def test_a_task_run_again_counts_its_bytes_once(manager: StagingManager, www: Path):
    payload = (www / "lightcurve.fits").read_bytes()
    with RangeHTTPServer(www) as server:
        server.ranges = False  # each try restarts the file from its first byte
        server.short_body_by = 1000
        server.short_bodies_left = 1 + MAX_RESUMES  # the first try's answers: it gives up (size_mismatch)
        job, _ = manager.create(CreateJob(source=server.url("lightcurve.fits"), destination="kepler"))
        done = manager.wait(job.id, timeout=120)
        gets = len(server.requests_for("lightcurve.fits", "GET"))
    assert done.state == JobState.succeeded, done.error
    assert gets == 2 + MAX_RESUMES  # the first try's answers, then the second try's one
    assert (manager.root_dir / "kepler" / "lightcurve.fits").read_bytes() == payload
    record = manager.store.get_job(job.id)
    assert record.bytes_done == SIZE  # counted once, not once per try
    assert manager.get(job.id).progress.bytes_done == SIZE


def test_a_wrong_stated_checksum_fails_the_job_without_running_the_task_again(
    manager: StagingManager, www: Path
):
    with RangeHTTPServer(www) as server:
        server.digest_headers = {"Repr-Digest"}
        server.wrong_digests = True
        job, _ = manager.create(CreateJob(source=server.url("lightcurve.fits"), destination="kepler"))
        done = manager.wait(job.id, timeout=120)
        gets = len(server.requests_for("lightcurve.fits", "GET"))
    assert done.state == JobState.failed and done.error is not None
    assert done.error.code == "checksum_mismatch", done.error
    assert gets == 1  # not fetched again TASK_RETRIES times to fail the same check
    assert manager.store.get_job(job.id).bytes_done == SIZE
    assert not (manager.root_dir / "kepler" / "lightcurve.fits").exists()


def test_which_errors_of_a_task_are_final():
    """What ``on_worker`` hands back instead of raising (Dask runs a task that raises again): an error that
    would only repeat, including a full disk on the worker; a source not found (a worker's missing mount)
    and a connection that kept breaking are raised, so Dask runs the task again."""

    def full_disk() -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    def mismatch() -> None:
        raise ChecksumMismatch("lightcurve.fits: sha256 mismatch")

    failed = on_worker(full_disk)
    assert isinstance(failed, TaskFailed) and failed.error.code == "no_space"
    failed = on_worker(mismatch)
    assert isinstance(failed, TaskFailed) and failed.error.code == "checksum_mismatch"
    for retried in (
        SourceNotFound("no such file"),
        TransferFailed("connection reset"),
        OSError(errno.EIO, "EIO"),
    ):

        def raising(error: Exception = retried) -> None:
            raise error

        with pytest.raises(type(retried)):
            on_worker(raising)
