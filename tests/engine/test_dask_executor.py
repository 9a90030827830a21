"""Jobs on a Dask cluster (issue 15): ``DaskExecutor`` runs a job's files and byte ranges as tasks on the
workers of a real ``distributed.LocalCluster`` (two worker processes on 127.0.0.1), and the output is the
local executor's, byte for byte.

The engine runs in this process (a real :class:`StagingManager`, SQLite in ``tmp_path``); the cluster's
workers are separate processes that write into ``tmp_path`` (a file system they share with the server).
The worker that cannot see the destination runs in its own mount namespace (``unshare``), with an empty
tmpfs over the server's root.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from distributed import Client, LocalCluster

from jupyter_staging.engine.executors import DaskExecutor, LocalExecutor
from jupyter_staging.engine.manager import StagingManager
from jupyter_staging.engine.models import CreateJob, DescribeJob, JobState
from jupyter_staging.engine.taskoutcomes import on_worker
from jupyter_staging.safety.dirfd import write_refused
from tests.helpers.dask import local_cluster
from tests.helpers.data import KEPLER, SPITZER, TESS, latin1_past_inference, sha256, wait_until
from tests.helpers.servers import RangeHTTPServer

FINAL = {JobState.succeeded, JobState.failed, JobState.cancelled, JobState.paused}


def make_manager(root: Path, executor_class: type = DaskExecutor, **options: Any) -> StagingManager:
    root.mkdir(parents=True, exist_ok=True)
    manager = StagingManager(
        root,
        db_url=f"sqlite:///{root}/.jobs.db",
        executor_class=executor_class,
        executor_options=options,
    )
    manager.start()
    return manager


@pytest.fixture
def dask_manager(tmp_path: Path, cluster: LocalCluster) -> Iterator[StagingManager]:
    manager = make_manager(tmp_path / "dask-root", scheduler_address=cluster.scheduler_address)
    yield manager
    manager.stop(wait=True)


def run(manager: StagingManager, request: CreateJob, timeout: float = 300.0) -> DescribeJob:
    job, _ = manager.create(request)
    return wait_until(lambda: _final(manager, job.id), timeout=timeout, what=f"job {job.id} to end")


def _final(manager: StagingManager, job_id: str) -> DescribeJob | None:
    job = manager.get(job_id)
    return job if job.state in FINAL else None


def log_text(manager: StagingManager, job_id: str) -> str:
    return "\n".join(line["message"] for line in manager.job_log(job_id))


def manifest_objects(manager: StagingManager, job_id: str) -> list[tuple[str, int, str]]:
    objects = manager.manifest(job_id)["objects"]
    return sorted((o["path"], o["size"], o["sha256"]) for o in objects)


def test_a_manifest_of_three_mission_files_matches_the_local_executor(tmp_path, dask_manager):
    manifest = {"kepler": str(KEPLER), "tess": str(TESS), "catalog": str(SPITZER)}
    job = run(dask_manager, CreateJob(manifest=manifest, destination="inputs"))
    assert job.state == JobState.succeeded, job.error
    assert "Dask workers see the destination folder" in log_text(dask_manager, job.id)

    local = make_manager(tmp_path / "local-root", executor_class=LocalExecutor)
    try:
        reference = run(local, CreateJob(manifest=manifest, destination="inputs"))
        assert reference.state == JobState.succeeded
        assert manifest_objects(dask_manager, job.id) == manifest_objects(local, reference.id)
    finally:
        local.stop(wait=True)
    for name, path in manifest.items():
        assert sha256(tmp_path / "dask-root" / "inputs" / name / Path(path).name) == sha256(Path(path))


def write_numbered_blocks(path: Path, size: int, block: int = 1024**2) -> str:
    """A file of ``size`` bytes whose every 1 MiB block starts with its own number (a range written at the
    wrong offset changes the sha256); returns its sha256."""
    base = os.urandom(block)
    digest = hashlib.sha256()
    with open(path, "wb") as out:
        for index, start in enumerate(range(0, size, block)):
            data = (index.to_bytes(8, "big") + base[8:])[: min(block, size - start)]
            out.write(data)
            digest.update(data)
    return digest.hexdigest()


def test_a_two_gib_local_file_is_copied_in_ranges_on_both_workers(tmp_path, cluster):
    source = tmp_path / "big" / "catalog.bin"
    source.parent.mkdir()
    expected = write_numbered_blocks(source, 2 * 1024**3 + 12345)
    manager = make_manager(
        tmp_path / "root", scheduler_address=cluster.scheduler_address, range_bytes=256 * 1024**2
    )
    seen: set[str] = set()
    try:
        job, _ = manager.create(CreateJob(source=str(source), destination="big"))

        def ended() -> DescribeJob | None:
            described = manager.get(job.id)
            if described.progress.tasks is not None:
                seen.update(described.progress.tasks.workers)
            return described if described.state in FINAL else None

        done = wait_until(ended, timeout=600, interval=0.1, what="the 2 GiB copy")
        assert done.state == JobState.succeeded, done.error
        assert done.progress.bytes_done == done.progress.bytes_total == source.stat().st_size
        assert "catalog.bin: 9 ranges of up to 268435456 bytes as Dask tasks" in log_text(manager, job.id)
        [(_, size, digest)] = manifest_objects(manager, job.id)
        assert (size, digest) == (source.stat().st_size, expected)
        assert sha256(tmp_path / "root" / "big" / "catalog.bin") == expected
        assert len(seen) == 2, seen  # both workers ran ranges
        assert not list((tmp_path / "root" / "big").glob("*.part"))
    finally:
        manager.stop(wait=True)
        source.unlink()
        shutil.rmtree(tmp_path / "root", ignore_errors=True)


@pytest.fixture
def slow_server(tmp_path) -> Iterator[tuple[RangeHTTPServer, dict[str, str]]]:
    """Six 1 MB files served at 400 kB/s each (a task takes about 2.5 s)."""
    served = tmp_path / "served"
    served.mkdir()
    sums = {}
    for i in range(6):
        data = os.urandom(1_000_000)
        (served / f"lc-{i}.fits").write_bytes(data)
        sums[f"lc-{i}"] = hashlib.sha256(data).hexdigest()
    with RangeHTTPServer(served, throttle_bytes_per_s=400_000) as server:
        yield server, sums


def manifest_of(server: RangeHTTPServer, sums: dict[str, str]) -> dict[str, str]:
    return {name: server.url(f"{name}.fits") for name in sums}


def staged_sums(root: Path, sums: dict[str, str]) -> dict[str, str]:
    return {name: sha256(root / name / f"{name}.fits") for name in sums}


def running_tasks(manager: StagingManager, job_id: str) -> int:
    tasks = manager.get(job_id).progress.tasks
    return tasks.running if tasks is not None else 0


def test_pause_resume_and_cancel_reach_running_tasks(tmp_path, dask_manager, slow_server):
    server, sums = slow_server
    job, _ = dask_manager.create(CreateJob(manifest=manifest_of(server, sums), destination="lcs"))
    wait_until(lambda: running_tasks(dask_manager, job.id), timeout=60, what="tasks to run")
    dask_manager.pause(job.id)
    paused = wait_until(lambda: _final(dask_manager, job.id), timeout=15, what="the pause")
    assert paused.state == JobState.paused
    assert paused.progress.tasks is None

    dask_manager.resume(job.id)
    done = wait_until(lambda: _final(dask_manager, job.id), timeout=120, what="the resumed job")
    assert done.state == JobState.succeeded, done.error
    assert staged_sums(tmp_path / "dask-root" / "lcs", sums) == sums

    # New files: the same ones again would be copied from the output above, not downloaded (too fast to
    # cancel; the CI machine once finished the job first).
    others = {}
    for i in range(6):
        (server.root / f"other-{i}.fits").write_bytes(os.urandom(1_000_000))
        others[f"other-{i}"] = ""
    other, _ = dask_manager.create(CreateJob(manifest=manifest_of(server, others), destination="again"))
    wait_until(lambda: running_tasks(dask_manager, other.id), timeout=60, what="tasks to run")
    dask_manager.cancel(other.id)
    cancelled = wait_until(lambda: _final(dask_manager, other.id), timeout=15, what="the cancel")
    assert cancelled.state == JobState.cancelled, cancelled.error
    left = [p for p in (tmp_path / "dask-root" / "again").rglob("*") if p.is_file()]
    assert left == []


def test_a_worker_killed_mid_job_its_tasks_run_again_and_the_job_succeeds(tmp_path, slow_server):
    server, sums = slow_server
    with (
        local_cluster() as own,
        Client(own, set_as_default=False) as client,
    ):
        manager = make_manager(tmp_path / "root", scheduler_address=own.scheduler_address)
        try:
            job, _ = manager.create(CreateJob(manifest=manifest_of(server, sums), destination="lcs"))

            def busy_worker() -> str | None:
                tasks = manager.get(job.id).progress.tasks
                return next(iter(tasks.workers), None) if tasks is not None else None

            victim = wait_until(busy_worker, timeout=60, what="a worker running a task")
            pids = client.run(os.getpid)
            os.kill(pids[victim], signal.SIGKILL)
            done = wait_until(lambda: _final(manager, job.id), timeout=180, what="the job to end")
            assert done.state == JobState.succeeded, done.error
            assert staged_sums(tmp_path / "root" / "lcs", sums) == sums
            assert {o[2] for o in manifest_objects(manager, job.id)} == set(sums.values())
            assert not list((tmp_path / "root" / "lcs").rglob("*.part"))
        finally:
            manager.stop(wait=True)


def test_a_destination_the_workers_cannot_see_is_refused_before_any_byte_moves(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    with (
        local_cluster(workers=0) as scheduler_only,
        Client(scheduler_only, set_as_default=False) as client,
    ):
        # One worker whose view of the server's root is an empty tmpfs (its own mount namespace).
        command = (
            f"mount -t tmpfs tmpfs {root} && exec {sys.executable} -m distributed.cli.dask_worker "
            f"{scheduler_only.scheduler_address} --nthreads 1 --host 127.0.0.1 --no-dashboard --no-nanny"
        )
        worker = subprocess.Popen(
            ["unshare", "--user", "--map-root-user", "--mount", "--", "sh", "-c", command]
        )
        try:
            client.wait_for_workers(1, timeout=60)
            manager = make_manager(root, scheduler_address=scheduler_only.scheduler_address)
            try:
                job = run(manager, CreateJob(source=str(KEPLER), destination="lc"), timeout=120)
                assert job.state == JobState.failed
                assert job.error is not None and job.error.code == "destination_not_shared"
                assert "cannot see the destination folder 'lc'" in job.error.message
                assert str(tmp_path) not in job.error.message
                assert job.progress.bytes_done == 0
                assert [c.state for c in manager.chunks(job.id, urls=False)] in ([], ["pending"])
                assert not [p for p in (root / "lc").rglob("*") if p.is_file()]
            finally:
                manager.stop(wait=True)
        finally:
            worker.terminate()
            worker.wait(timeout=30)


@pytest.mark.parametrize("convert", [False, True])
def test_a_root_removed_under_the_server_fails_a_dask_job_clearly(tmp_path, cluster, convert):
    """The server's root gone while it runs: a copy or a conversion on the cluster fails with
    ``destination_unavailable`` (the workers' writers open the root as the server's do), and the same
    request succeeds once the folder is back."""
    root = tmp_path / "root"
    root.mkdir()
    manager = StagingManager(
        root,
        db_url=f"sqlite:///{tmp_path}/jobs.db",
        executor_class=DaskExecutor,
        executor_options={"scheduler_address": cluster.scheduler_address},
    )
    manager.start()
    request = CreateJob(
        source=str(KEPLER), destination="lc", convert={"format": "parquet"} if convert else None
    )
    try:
        shutil.rmtree(root)
        failed = run(manager, request, timeout=120)
        assert not root.exists()
        root.mkdir()
        done = run(manager, request, timeout=120)
    finally:
        manager.stop(wait=True)
    assert failed.state == JobState.failed
    assert failed.error is not None and failed.error.code == "destination_unavailable", failed.error
    assert str(root) in failed.error.message and "Traceback" not in failed.error.message
    assert done.state == JobState.succeeded, done
    assert (root / "lc" / "manifest.json").is_file()


def converted(manager: StagingManager, job_id: str) -> list[tuple[str, int, str, int]]:
    objects = manager.manifest(job_id)["objects"]
    return sorted((o["path"], o["size"], o["sha256"], o["rows"]) for o in objects)


def write_light_curve_csv(path: Path, rows: int) -> None:
    """A light-curve-like CSV of ``rows`` rows (TIME, FLUX, FLUX_ERR, QUALITY)."""
    block = "".join(
        f"{i * 0.0204:.6f},{1000 + (i % 997) * 0.5:.3f},{0.1 + (i % 13) * 0.01:.3f},{i % 8}\n"
        for i in range(10_000)
    )
    with open(path, "w") as fh:
        fh.write("TIME,FLUX,FLUX_ERR,QUALITY\n")
        for _ in range(rows // 10_000):
            fh.write(block)


@pytest.mark.parametrize(
    ("name", "chunk_rows"),
    [("kepler", 1000), ("csv", 50_000), ("latin-1 csv", 100_000)],
)
def test_a_table_is_converted_in_part_ranges_identical_to_the_local_executor(
    tmp_path, cluster, name, chunk_rows
):
    convert: dict[str, Any] = {"format": "parquet", "chunk_rows": chunk_rows}
    if name == "kepler":
        source = KEPLER
    elif name == "csv":
        source = tmp_path / "lightcurve.csv"
        write_light_curve_csv(source, 1_000_000)  # about 30 MB: 20 parts, ranges of 1 MiB
    else:  # its last row is Latin-1 text: the range tasks read it with the job's encoding
        source = latin1_past_inference(tmp_path / "names.csv")
        convert["encoding"] = "latin-1"
    request = CreateJob(source=str(source), destination="table", convert=convert)
    dask = make_manager(tmp_path / "dask", scheduler_address=cluster.scheduler_address, range_bytes=1024**2)
    local = make_manager(tmp_path / "local", executor_class=LocalExecutor)
    try:
        job = run(dask, request)
        reference = run(local, request)
        assert job.state == reference.state == JobState.succeeded, (job.error, reference.error)
        assert "part ranges of" in log_text(dask, job.id)
        parts = converted(dask, job.id)
        assert len(parts) > 2
        for path, _size, digest, _rows in parts:  # on disk where the records say
            assert sha256(tmp_path / "dask" / "table" / path) == digest
        assert not (tmp_path / "dask" / f"{Path(source).stem}.parquet").exists()
        assert parts == converted(local, reference.id)
        assert job.progress.rows_done == reference.progress.rows_done == sum(p[3] for p in parts)
        assert [c.index for c in dask.chunks(job.id, urls=False)] == list(range(len(parts)))
        assert [c.path for c in dask.chunks(job.id, urls=False)] == sorted(
            c.path for c in dask.chunks(job.id, urls=False)
        )
        if "encoding" in convert:
            last = pq.read_table(tmp_path / "dask" / "table" / parts[-1][0]).to_pylist()[-1]
            assert last == {"name": "Beta Ångström", "flux": 2.5}
    finally:
        dask.stop(wait=True)
        local.stop(wait=True)


def test_a_folder_a_worker_may_not_write_into_names_the_workers_user(cluster):
    """A task runs on a worker that may be another user than the server's: a folder it may not write into
    is named as the worker's user's, never the server's (the server's own writes still say so)."""
    from distributed import Client

    refused = PermissionError(errno.EACCES, "Permission denied")
    with Client(cluster.scheduler_address) as client:
        on_the_worker = client.submit(on_worker, write_refused, "lc.fits", refused, pure=False).result()
    assert "the Dask worker's user may not write into its folder" in on_the_worker.message
    assert "this server's user may not write into its folder" in write_refused("lc.fits", refused).message


def random_file(path: Path, size: int = 3 * 1024**2 + 5) -> Path:
    """``path`` holding ``size`` random bytes (3 MiB and a tail: three 1 MiB range tasks and a short one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(os.urandom(size))
    return path


def test_a_refused_mark_on_a_ranges_part_fails_the_job_destination_not_writable(
    tmp_path, cluster, monkeypatch
):
    """The server marks the part it makes for range tasks (``user.jupyter_staging.ranges``); a file system
    or security module that refuses that one attribute (caused here by refusing it in this process only:
    the workers are other processes) fails the job ``destination_not_writable`` with nothing left in the
    folder, rather than ``internal_error`` with a full-size part behind it."""
    from jupyter_staging.safety import ownership

    real = os.setxattr

    def refusing(path: Any, attribute: str, value: bytes, *args: Any, **kwargs: Any) -> None:
        if attribute == ownership.RANGES_XATTR:
            raise PermissionError(errno.EACCES, "Permission denied")
        real(path, attribute, value, *args, **kwargs)

    monkeypatch.setattr(ownership.os, "setxattr", refusing)
    manager = make_manager(
        tmp_path / "root", scheduler_address=cluster.scheduler_address, range_bytes=1024**2
    )
    try:
        job = run(
            manager, CreateJob(source=str(random_file(tmp_path / "src" / "catalog.bin")), destination="big")
        )
        assert job.state == JobState.failed and job.error is not None, job
        assert job.error.code == "destination_not_writable", job.error
        assert "catalog.bin" in job.error.message and "Traceback" not in job.error.message
        assert list((tmp_path / "root").rglob("*.part")) == []
    finally:
        manager.stop(wait=True)


def test_a_worker_whose_parts_arrive_untagged_is_recorded_for_the_cleanup(tmp_path, cluster, monkeypatch):
    """The server reads the worker's probe file: one that arrives without the job's tag (a worker mount
    without user attributes where the server's keeps them; caused here by what ``read_probe`` answers, as
    no such mount can be made in a test) is recorded in the job's resume data, so that the job's cleanup
    goes by the parts' names, as before the tags (``parts_tagged``; the removal itself:
    tests/destinations/test_local_cleanup.py)."""
    from jupyter_staging.engine import spread
    from jupyter_staging.engine.folders import parts_tagged

    real = spread.read_probe

    def untagged(*args: Any, **kwargs: Any) -> tuple[bool, bool]:
        seen, _ = real(*args, **kwargs)
        return seen, False

    monkeypatch.setattr(spread, "read_probe", untagged)
    manager = make_manager(
        tmp_path / "root", scheduler_address=cluster.scheduler_address, range_bytes=1024**2
    )
    try:
        job = run(
            manager, CreateJob(source=str(random_file(tmp_path / "src" / "catalog.bin")), destination="big")
        )
        assert job.state == JobState.succeeded, job.error
        resume = manager.store.get_job(job.id).resume
        assert list(resume["untagged_parts_hosts"].values()) == [True]
        assert parts_tagged(resume) is False
        assert "cannot tag the part files it makes" in log_text(manager, job.id)
    finally:
        manager.stop(wait=True)


def test_a_users_file_named_like_a_part_stops_the_range_task_and_is_kept(tmp_path, cluster):
    """The user keeps ``part-00005.parquet`` of their own in the folder a table converts into: the range
    task that writes that part leaves it (older than the job) and fails ``destination_exists`` at it,
    where it used to remove it as a dead attempt's leftover and put its own part there."""
    source = tmp_path / "lightcurve.csv"
    write_light_curve_csv(source, 1_000_000)  # about 30 MB: 20 parts in ranges of 1 MiB
    dask = make_manager(tmp_path / "dask", scheduler_address=cluster.scheduler_address, range_bytes=1024**2)
    mine = tmp_path / "dask" / "table" / "lightcurve.parquet" / "part-00005.parquet"
    mine.parent.mkdir(parents=True)
    mine.write_bytes(b"the user's")
    try:
        job = run(dask, CreateJob(source=str(source), destination="table", convert={"chunk_rows": 50_000}))
        assert job.state == JobState.failed and job.error is not None, job
        assert job.error.code == "destination_exists", job.error
        assert "part ranges of" in log_text(dask, job.id)
        assert mine.read_bytes() == b"the user's"
    finally:
        dask.stop(wait=True)


SERVER = """
import sys, time, json
from jupyter_staging.engine.executors import DaskExecutor
from jupyter_staging.engine.manager import StagingManager
from jupyter_staging.engine.models import CreateJob
if __name__ == "__main__":
    mgr = StagingManager(sys.argv[1], db_url=sys.argv[2], sweep_interval=0, executor_class=DaskExecutor,
                         executor_options={"scheduler_address": sys.argv[3]})
    mgr.start()
    job, _ = mgr.create(CreateJob(manifest=json.loads(sys.argv[4]), destination="lcs"))
    print(job.id, flush=True)
    time.sleep(600)
"""


def test_the_server_killed_mid_job_resumes_it_on_the_cluster(tmp_path, cluster, slow_server):
    server, sums = slow_server
    root = tmp_path / "root"
    root.mkdir()
    db_url = f"sqlite:///{root}/.jobs.db"
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            SERVER,
            str(root),
            db_url,
            cluster.scheduler_address,
            json.dumps(manifest_of(server, sums)),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        job_id = child.stdout.readline().strip()  # type: ignore[union-attr]
        # Kill once tasks are writing: their part files are there, nothing is published yet.
        wait_until(lambda: list((root / "lcs").rglob("*.part")), timeout=60, what="part files")
        child.send_signal(signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
    manager = make_manager(root, scheduler_address=cluster.scheduler_address)
    try:
        done = wait_until(lambda: _final(manager, job_id), timeout=180, what="the resumed job")
        assert done.state == JobState.succeeded, done.error
        assert staged_sums(root / "lcs", sums) == sums
        assert {o[2] for o in manifest_objects(manager, job_id)} == set(sums.values())
        assert "stopped while this job ran" in log_text(manager, job_id)
        assert not list((root / "lcs").rglob("*.part"))
    finally:
        manager.stop(wait=True)


def test_a_large_http_download_is_fetched_as_conditional_range_tasks(tmp_path, cluster):
    www = tmp_path / "www"
    www.mkdir()
    expected = write_numbered_blocks(www / "image.fits", 5 * 1024**2 + 77)
    manager = make_manager(
        tmp_path / "root", scheduler_address=cluster.scheduler_address, range_bytes=1024**2
    )
    try:
        with RangeHTTPServer(www) as server:
            job = run(manager, CreateJob(source=server.url("image.fits"), destination="img"))
            ranged = [r for r in server.requests_for("image.fits", "GET") if r.header("Range")]
        assert job.state == JobState.succeeded, job.error
        assert "image.fits: 6 ranges of up to 1048576 bytes as Dask tasks" in log_text(manager, job.id)
        assert len(ranged) == 6 and all(r.header("If-Range") for r in ranged)
        assert sha256(tmp_path / "root" / "img" / "image.fits") == expected
    finally:
        manager.stop(wait=True)


def test_a_download_below_range_bytes_is_one_task_on_parallel_streams(tmp_path, cluster):
    """A file too small to be split into range tasks (under ``range_bytes``) but large enough for
    parallel streams (64 MiB or more) is one task that fetches its ranges on ``streams_per_file``
    streams, each conditional on the file's version, written at its offset, hashed and verified whole."""
    www = tmp_path / "www"
    www.mkdir()
    expected = write_numbered_blocks(www / "cube.fits", 70 * 1024**2 + 77)
    manager = make_manager(tmp_path / "root", scheduler_address=cluster.scheduler_address)
    try:
        with RangeHTTPServer(www) as server:
            job = run(manager, CreateJob(source=server.url("cube.fits"), destination="img"))
            gets = server.requests_for("cube.fits", "GET")
        assert job.state == JobState.succeeded, job.error
        assert "ranges of up to" not in log_text(manager, job.id)  # not split into range tasks
        # 32 MiB ranges (the smallest) on 4 streams: 3 of them, each conditional on the ETag.
        assert sorted(r.header("Range") for r in gets) == [
            "bytes=0-33554431",
            "bytes=33554432-67108863",
            f"bytes=67108864-{70 * 1024**2 + 76}",
        ]
        assert all(r.header("If-Range") for r in gets)
        assert sha256(tmp_path / "root" / "img" / "cube.fits") == expected
        assert job.progress.bytes_done == 70 * 1024**2 + 77
    finally:
        manager.stop(wait=True)


def test_a_users_file_at_a_workers_part_name_is_set_aside_and_logged_by_the_server(tmp_path, cluster):
    """The worker making ``lc.fits.part`` finds a file of the user's at that name: it is set aside, never
    removed, and the task's log line reaches the job's log through the server."""
    www = tmp_path / "www"
    www.mkdir()
    shutil.copyfile(KEPLER, www / "lc.fits")
    manager = make_manager(tmp_path / "root", scheduler_address=cluster.scheduler_address)
    mine = tmp_path / "root" / "lcs" / "lc.fits.part"
    mine.parent.mkdir()
    mine.write_bytes(b"the user's unfinished download")
    try:
        with RangeHTTPServer(www) as server:
            job = run(manager, CreateJob(source=server.url("lc.fits"), destination="lcs"))
        assert job.state == JobState.succeeded, job.error
        aside = mine.with_name(f"_lc.fits.part.set-aside-{job.id[:8]}")
        assert aside.read_bytes() == b"the user's unfinished download"
        assert sha256(mine.parent / "lc.fits") == sha256(KEPLER)
        assert f"was set aside as {aside.name}" in log_text(manager, job.id)
    finally:
        manager.stop(wait=True)


def test_an_object_store_destination_is_uploaded_by_the_workers(tmp_path, s3_env):
    client, bucket = s3_env
    manifest = {"kepler": str(KEPLER), "tess": str(TESS), "catalog": str(SPITZER)}
    # A cluster of its own, started after s3_env: its workers inherit the S3 endpoint and credentials.
    with local_cluster(threads=1) as own:
        manager = make_manager(tmp_path / "root", scheduler_address=own.scheduler_address)
        try:
            job = run(manager, CreateJob(manifest=manifest, destination=f"s3://{bucket}/inputs/"))
            assert job.state == JobState.succeeded, job.error
            log = log_text(manager, job.id)
            assert "own threads" not in log and "probe" not in log
            objects = {o[0]: o[2] for o in manifest_objects(manager, job.id)}
        finally:
            manager.stop(wait=True)
    for name, path in manifest.items():
        rel = f"{name}/{Path(path).name}"
        assert objects[rel] == sha256(Path(path))
        body = client.get_object(Bucket=bucket, Key=f"inputs/{job.id}/{rel}")["Body"].read()
        assert hashlib.sha256(body).hexdigest() == objects[rel]
    assert not list((tmp_path / "root").rglob("kplr*"))  # nothing through the server's scratch folder


def test_a_large_file_for_object_storage_is_fetched_by_its_task_on_parallel_streams(tmp_path, s3_env):
    """A task that uploads what it fetched (an object-store destination) fetches a file of 64 MiB or
    more on parallel streams too, then verifies and uploads it whole."""
    client, bucket = s3_env
    www = tmp_path / "www"
    www.mkdir()
    size = 70 * 1024**2 + 5
    expected = write_numbered_blocks(www / "cube.fits", size)
    with local_cluster(threads=1) as own, RangeHTTPServer(www) as server:
        manager = make_manager(tmp_path / "root", scheduler_address=own.scheduler_address)
        try:
            job = run(manager, CreateJob(source=server.url("cube.fits"), destination=f"s3://{bucket}/big/"))
            gets = server.requests_for("cube.fits", "GET")
        finally:
            manager.stop(wait=True)
    assert job.state == JobState.succeeded, job.error
    assert len(gets) == 3 and all(r.header("Range") and r.header("If-Range") for r in gets)
    body = client.get_object(Bucket=bucket, Key=f"big/{job.id}/cube.fits")["Body"].read()
    assert len(body) == size and hashlib.sha256(body).hexdigest() == expected


def test_an_s3_object_listed_below_a_prefix_is_split_into_range_tasks_and_checked_by_its_crc(
    tmp_path, s3_env, s3_server
):
    """A listing states no checksum, nor does a ranged GET: before its range tasks, one HEAD (conditional
    on the listed ETag, ``x-amz-checksum-mode: ENABLED``) asks for the object's, for the task that checks
    the assembled file (tests/sources/test_stated_checksums.py: a mismatch there publishes nothing)."""
    client, bucket = s3_env
    data = os.urandom(3 * 1024**2 + 11)
    client.put_object(Bucket=bucket, Key="cubes/cube.fits", Body=data, ChecksumAlgorithm="CRC64NVME")
    with local_cluster(threads=1) as own:  # started after s3_env: its workers see the endpoint
        manager = make_manager(
            tmp_path / "root", scheduler_address=own.scheduler_address, range_bytes=1024**2
        )
        try:
            s3_server.start_recording()
            job = run(manager, CreateJob(source=f"s3://{bucket}/cubes/", destination="img"))
            requests = [r for r in s3_server.recorded() if "cube.fits" in r["url"].split("?")[0]]
            log = log_text(manager, job.id)
        finally:
            s3_server.stop_recording()
            manager.stop(wait=True)
    assert job.state == JobState.succeeded, job.error
    assert "cube.fits: 4 ranges of up to 1048576 bytes as Dask tasks" in log
    heads = [r for r in requests if r["method"] == "HEAD"]
    assert len(heads) == 1, heads
    headers = {k.lower(): v for k, v in heads[0]["headers"].items()}
    assert headers.get("x-amz-checksum-mode") == "ENABLED" and headers.get("if-match")
    assert sum(r["method"] == "GET" for r in requests) == 4
    assert (tmp_path / "root" / "img" / "cube.fits").read_bytes() == data


def test_a_run_closing_late_leaves_the_newer_run_of_its_job_in_place():
    """Pause then resume at once: the paused run's tasks may close after the resumed run began. Closing
    must not delete the run variable the newer run set (its tasks would wait for it and fail)."""
    from distributed import Variable

    from jupyter_staging.engine.progress import LiveProgress
    from jupyter_staging.engine.tasks import TaskContext
    from jupyter_staging.engine.taskset import JobTasks
    from jupyter_staging.safety.control import JobControl

    with local_cluster(workers=0) as cluster, Client(cluster, set_as_default=False) as client:

        def run(attempt: int) -> JobTasks:
            ctx = TaskContext("job-1", "/tmp", "run", attempt)
            return JobTasks(client, ctx, JobControl(), LiveProgress(), lambda: None)

        def held() -> int | None:
            """The run the variable names, or None once deleted (a deletion reaches the scheduler
            asynchronously: wait a little before looking)."""
            time.sleep(1)
            try:
                return Variable(second.ctx.run_key, client=client).get(timeout=2)
            except TimeoutError:
                return None

        first = run(1)
        second = run(2)
        first.close()  # late: the newer run is already there
        assert held() == 2
        second.close()
        assert held() is None
