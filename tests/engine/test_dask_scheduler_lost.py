"""A Dask cluster that fails under a running job: its scheduler killed for good, killed and started again at
once at the same address, a task's worker killed. The scheduler and workers are processes of their own on
127.0.0.1 (:class:`~tests.helpers.dask.DaskProcesses`), killed with ``SIGKILL`` as a crashed node would be;
the engine runs in this process (a real :class:`StagingManager`, SQLite in ``tmp_path``).

Nobody cancels these jobs: each ends ``failed`` with a stable code (``cluster_unavailable``,
``worker_killed``), never ``cancelled`` nor ``internal_error``, and a server whose cluster came back runs
new jobs without a restart.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dask
import pytest
from distributed import Client

from jupyter_staging.engine import daskwait, taskset
from jupyter_staging.engine.executors import DaskExecutor
from jupyter_staging.engine.manager import StagingManager
from jupyter_staging.engine.models import CreateJob, DescribeJob, JobState
from tests.helpers.dask import DaskProcesses
from tests.helpers.data import sha256, wait_until
from tests.helpers.net import free_port
from tests.helpers.servers import RangeHTTPServer

FINAL = {JobState.succeeded, JobState.failed, JobState.cancelled, JobState.paused}


@pytest.fixture
def www(tmp_path: Path) -> Iterator[RangeHTTPServer]:
    """``small.fits`` (10 kB) and ``big-0.fits``, ``big-1.fits`` (1 MB each), served at 200 kB/s (a big
    file's task takes about 5 s)."""
    served = tmp_path / "www"
    served.mkdir()
    (served / "small.fits").write_bytes(os.urandom(10_000))
    for i in range(2):
        (served / f"big-{i}.fits").write_bytes(os.urandom(1_000_000))
    with RangeHTTPServer(served, throttle_bytes_per_s=200_000) as server:
        yield server


@pytest.fixture
def processes() -> Iterator[DaskProcesses]:
    made = DaskProcesses(free_port())
    try:
        yield made
    finally:
        made.close()


def make_manager(root: Path, address: str) -> StagingManager:
    root.mkdir(parents=True, exist_ok=True)
    manager = StagingManager(
        root,
        db_url=f"sqlite:///{root}/.jobs.db",
        executor_class=DaskExecutor,
        executor_options={"scheduler_address": address},
    )
    manager.start()
    return manager


def ended(manager: StagingManager, job_id: str, timeout: float) -> DescribeJob:
    def final() -> DescribeJob | None:
        job = manager.get(job_id)
        return job if job.state in FINAL else None

    return wait_until(final, timeout=timeout, what=f"job {job_id} to end")


def running(manager: StagingManager, job_id: str) -> Any:
    tasks = manager.get(job_id).progress.tasks
    return tasks is not None and tasks.running


def log_text(manager: StagingManager, job_id: str) -> str:
    return "\n".join(line["message"] for line in manager.job_log(job_id))


def test_a_scheduler_lost_for_good_fails_the_job_and_a_new_one_runs_once_it_is_back(tmp_path, www, processes):
    # The client gives up reconnecting after 3 s, not 30 (distributed.comm.timeouts.connect).
    with dask.config.set({"distributed.comm.timeouts.connect": "3s"}):
        processes.start_scheduler()
        processes.start_workers(1)
        manager = make_manager(tmp_path / "root", processes.address)
        try:
            executor = manager.executor
            assert isinstance(executor, DaskExecutor)
            manifest = {f"big-{i}": www.url(f"big-{i}.fits") for i in range(2)}
            job, _ = manager.create(CreateJob(manifest=manifest, destination="lcs"))
            wait_until(lambda: running(manager, job.id), timeout=30, what="tasks to run")
            first = executor.client()
            processes.close()

            failed = ended(manager, job.id, timeout=40)
            assert failed.state == JobState.failed
            assert failed.error is not None and failed.error.code == "cluster_unavailable", failed.error
            assert processes.address not in failed.error.message
            wait_until(lambda: first.status == "closed", timeout=30, what="the client to give up")

            processes.start_scheduler()  # the cluster back at the same address
            processes.start_workers(1)
            for attempt in range(2):
                again, _ = manager.create(
                    CreateJob(source=www.url("small.fits"), destination=f"again{attempt}")
                )
                done = ended(manager, again.id, timeout=30)
                assert done.state == JobState.succeeded, done.error
                assert sha256(tmp_path / "root" / f"again{attempt}" / "small.fits") == sha256(
                    www.root / "small.fits"
                )
            assert executor.client() is not first
        finally:
            manager.stop(wait=True)


def test_a_scheduler_restarted_mid_job_fails_it_cluster_unavailable_not_cancelled(tmp_path, www, processes):
    processes.start_scheduler()
    processes.start_workers(1)
    root = tmp_path / "root"
    manager = make_manager(root, processes.address)
    try:
        manifest = {"small": www.url("small.fits"), "big": www.url("big-0.fits")}
        job, _ = manager.create(CreateJob(manifest=manifest, destination="lcs"))
        wait_until(lambda: (root / "lcs" / "small" / "small.fits").is_file(), timeout=30, what="small")
        wait_until(lambda: running(manager, job.id), timeout=30, what="the big file's task to run")
        processes.kill_scheduler()
        processes.start_scheduler()  # within the client's reconnection window (30 s)

        failed = ended(manager, job.id, timeout=50)
        assert failed.state == JobState.failed, "nobody cancelled this job"
        assert failed.error is not None and failed.error.code == "cluster_unavailable", failed.error
        assert "connection to the Dask scheduler was lost" in failed.error.message
        # What the job published before the loss is kept (a new job of the same request reuses it).
        assert sha256(root / "lcs" / "small" / "small.fits") == sha256(www.root / "small.fits")
        assert not list((root / "lcs").rglob("*.part"))
        assert "partial output removed" not in log_text(manager, job.id)
    finally:
        manager.stop(wait=True)


def test_a_task_whose_worker_is_killed_fails_the_job_worker_killed(tmp_path, www, processes):
    # allowed-failures 0: the first worker that dies running a task makes it a KilledWorker.
    processes.env["DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES"] = "0"
    processes.start_scheduler()
    processes.start_workers(1)
    manager = make_manager(tmp_path / "root", processes.address)
    try:
        job, _ = manager.create(CreateJob(source=www.url("big-0.fits"), destination="lc"))
        wait_until(lambda: running(manager, job.id), timeout=30, what="the task to run")
        with Client(processes.address, set_as_default=False, timeout=10) as client:
            [pid] = client.run(os.getpid).values()
        os.kill(pid, 9)

        failed = ended(manager, job.id, timeout=40)
        assert failed.state == JobState.failed
        assert failed.error is not None and failed.error.code == "worker_killed", failed.error
        assert "died" in failed.error.message
        assert processes.address not in failed.error.message
    finally:
        manager.stop(wait=True)


def test_a_pause_while_the_scheduler_hangs_pauses_the_job(tmp_path, www, processes, monkeypatch):
    """A scheduler that hangs with its connections open (a frozen node: ``SIGSTOP``): the run's calls to it
    end after ``SCHEDULER_SECONDS`` (2 s here, 30 by default), so a pause asked meanwhile pauses the job,
    and a resume once the scheduler is back completes it. (``Client.processing()`` has no time limit:
    the job stayed ``running``, the pause and a cancel were never honoured.)"""
    monkeypatch.setattr(taskset, "SCHEDULER_SECONDS", 2.0)
    processes.start_scheduler()
    processes.start_workers(1)
    manager = make_manager(tmp_path / "root", processes.address)
    scheduler = processes.scheduler
    assert scheduler is not None
    try:
        job, _ = manager.create(CreateJob(source=www.url("big-0.fits"), destination="lc"))
        wait_until(lambda: running(manager, job.id), timeout=30, what="the task to run")
        os.kill(scheduler.pid, signal.SIGSTOP)
        try:
            manager.pause(job.id)
            paused = ended(manager, job.id, timeout=40)
            assert paused.state == JobState.paused, paused.error
            # A job started while it hangs: its run's first calls to the scheduler end too.
            second, _ = manager.create(CreateJob(source=www.url("big-1.fits"), destination="lc2"))
            wait_until(lambda: manager.get(second.id).state == JobState.running, 30, "the second job to run")
            manager.pause(second.id)
            assert ended(manager, second.id, timeout=40).state == JobState.paused
        finally:
            os.kill(scheduler.pid, signal.SIGCONT)
        for resumed, name in ((job, "lc/big-0.fits"), (second, "lc2/big-1.fits")):
            manager.resume(resumed.id)
            done = ended(manager, resumed.id, timeout=60)
            assert done.state == JobState.succeeded, done.error
            assert sha256(tmp_path / "root" / name) == sha256(www.root / name.split("/")[1])

    finally:
        manager.stop(wait=True)


def test_a_pause_while_the_destination_probe_waits_for_a_worker_pauses_the_job(tmp_path, www, processes):
    """One worker thread, busy with another job's file: the second job's probe of its destination waits
    in the queue, and the second job is paused meanwhile. (It failed ``destination_not_shared``: the
    pause was taken for the probe's failure.)"""
    processes.start_scheduler()
    processes.start_workers(1, threads=1)
    manager = make_manager(tmp_path / "root", processes.address)
    try:
        first, _ = manager.create(CreateJob(source=www.url("big-0.fits"), destination="a"))
        wait_until(lambda: running(manager, first.id), timeout=30, what="the first job's task to run")
        second, _ = manager.create(CreateJob(source=www.url("small.fits"), destination="b"))
        wait_until(lambda: manager.get(second.id).state == JobState.running, 30, "the second job to run")
        manager.pause(second.id)
        paused = ended(manager, second.id, timeout=40)
        assert paused.state == JobState.paused, paused.error
        assert ended(manager, first.id, timeout=60).state == JobState.succeeded
        manager.resume(second.id)
        assert ended(manager, second.id, timeout=60).state == JobState.succeeded
    finally:
        manager.stop(wait=True)


def test_calls_left_waiting_on_a_hung_scheduler_are_bounded(tmp_path, www, processes, monkeypatch):
    """A scheduler that hangs (``SIGSTOP``) for long while jobs keep starting (created, resumed): each run's
    first call to it ends after ``SCHEDULER_SECONDS``, but its thread stays blocked until the scheduler
    answers. At most ``MAX_ABANDONED`` such threads are left; a call beyond them fails at once, and the
    jobs end ``cluster_unavailable`` as before. (A thread was left per call: as many as runs started.)"""
    monkeypatch.setattr(taskset, "SCHEDULER_SECONDS", 1.0)
    processes.start_scheduler()
    processes.start_workers(1)
    manager = make_manager(tmp_path / "root", processes.address)
    scheduler = processes.scheduler
    assert scheduler is not None
    blocked = lambda: sum(t.name == "staging-dask-call" for t in threading.enumerate())  # noqa: E731
    try:
        first, _ = manager.create(CreateJob(source=www.url("small.fits"), destination="warm"))
        assert ended(manager, first.id, timeout=60).state == JobState.succeeded  # the client is connected
        os.kill(scheduler.pid, signal.SIGSTOP)
        try:
            for i in range(daskwait.MAX_ABANDONED + 3):
                job, _ = manager.create(CreateJob(source=www.url("small.fits"), destination=f"d{i}"))
                failed = ended(manager, job.id, timeout=60)
                assert failed.state == JobState.failed and failed.error.code == "cluster_unavailable"
            assert blocked() <= daskwait.MAX_ABANDONED
        finally:
            os.kill(scheduler.pid, signal.SIGCONT)
        wait_until(lambda: blocked() == 0, timeout=30, what="the blocked calls to end")
        again, _ = manager.create(CreateJob(source=www.url("small.fits"), destination="again"))
        assert ended(manager, again.id, timeout=60).state == JobState.succeeded
    finally:
        manager.stop(wait=True)


def test_calls_left_on_a_hung_scheduler_hold_back_no_other_cluster(tmp_path, www, processes, monkeypatch):
    """Calls left blocked on a scheduler that hangs for good (``SIGSTOP``: a frozen node) are bounded per
    scheduler: a server of this process on another, healthy cluster still runs its jobs. Before, the
    bound was one for the whole process: once ``MAX_ABANDONED`` calls to the frozen scheduler were left,
    every Dask job on any cluster ended ``cluster_unavailable`` at once, for as long as that node hung."""
    monkeypatch.setattr(taskset, "SCHEDULER_SECONDS", 1.0)
    other = DaskProcesses(free_port())
    processes.start_scheduler()
    processes.start_workers(1)
    other.start_scheduler()
    other.start_workers(1)
    hung = make_manager(tmp_path / "hung", processes.address)
    healthy = make_manager(tmp_path / "healthy", other.address)
    scheduler = processes.scheduler
    assert scheduler is not None
    try:
        first, _ = hung.create(CreateJob(source=www.url("small.fits"), destination="warm"))
        assert ended(hung, first.id, timeout=60).state == JobState.succeeded  # the client is connected
        os.kill(scheduler.pid, signal.SIGSTOP)
        try:
            for i in range(daskwait.MAX_ABANDONED + 1):
                job, _ = hung.create(CreateJob(source=www.url("small.fits"), destination=f"d{i}"))
                failed = ended(hung, job.id, timeout=60)
                assert failed.state == JobState.failed and failed.error.code == "cluster_unavailable"
            assert daskwait.abandoned(processes.address) == daskwait.MAX_ABANDONED
            job, _ = healthy.create(CreateJob(source=www.url("small.fits"), destination="fine"))
            done = ended(healthy, job.id, timeout=60)
            assert done.state == JobState.succeeded, done.error
            assert sha256(tmp_path / "healthy" / "fine" / "small.fits") == sha256(www.root / "small.fits")
        finally:
            os.kill(scheduler.pid, signal.SIGCONT)
        wait_until(lambda: daskwait.abandoned() == 0, timeout=30, what="the blocked calls to end")
    finally:
        healthy.stop(wait=True)
        hung.stop(wait=True)
        other.close()
