"""Progress of a job on Dask counts each task's work once (issue 12's progress audit): a task Dask runs
again (after an error, or a worker lost) starts from zero, and what its earlier try reported is taken back;
events of another run of the job are not counted.

A real :class:`LocalCluster` (two worker processes, 127.0.0.1) runs the tasks of a real
:class:`StagingManager`; the file comes from the Range HTTP server of tests/helpers/servers.py, which states
a wrong ``Repr-Digest`` (RFC 9530) for it, so each try of its task fetches it whole and fails its check.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from distributed import LocalCluster

from jupyter_staging.engine.executors import DaskExecutor
from jupyter_staging.engine.manager import StagingManager
from jupyter_staging.engine.models import CreateJob, JobState
from jupyter_staging.engine.taskset import TASK_RETRIES
from tests.helpers.dask import local_cluster
from tests.helpers.servers import RangeHTTPServer

SIZE = 1024 * 1024


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    with local_cluster() as made:
        yield made


def test_a_task_run_again_counts_its_bytes_once(tmp_path: Path, cluster: LocalCluster):
    www = tmp_path / "www"
    www.mkdir()
    (www / "lightcurve.fits").write_bytes(os.urandom(SIZE))
    root = tmp_path / "root"
    root.mkdir()
    manager = StagingManager(
        root,
        db_url=f"sqlite:///{tmp_path}/jobs.db",
        sweep_interval=0,
        executor_class=DaskExecutor,
        executor_options={"scheduler_address": cluster.scheduler_address},
    )
    manager.start()
    try:
        with RangeHTTPServer(www) as server:
            server.digest_headers = {"Repr-Digest"}
            server.wrong_digests = True
            job, _ = manager.create(CreateJob(source=server.url("lightcurve.fits"), destination="kepler"))
            done = manager.wait(job.id, timeout=120)
            gets = len(server.requests_for("lightcurve.fits", "GET"))
        assert done.state == JobState.failed and done.error is not None
        assert done.error.code == "checksum_mismatch", done.error
        assert gets == 1 + TASK_RETRIES  # the task ran again, fetching the whole file each time
        assert manager.store.get_job(job.id).bytes_done == SIZE  # counted once, not three times
    finally:
        manager.stop(wait=True)
