"""A folder of many small files on a Dask cluster: its files go as tasks of several files each
(:mod:`jupyter_staging.engine.itemtasks`), on a real ``LocalCluster`` (two worker processes on 127.0.0.1)
writing into ``tmp_path``, with a real manager in this process.

One task per file of 64 KiB staged 2,000 files at about 110 files/s, the server's process spending 4 ms of
CPU per file on Dask's own bookkeeping; in groups, several times faster (figures in bench/README.md).
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from distributed import Client, LocalCluster, Variable

from jupyter_staging.engine.itemtasks import GROUPED_BYTES, Grouping, fetch_items, files_per_group
from jupyter_staging.engine.manager import StagingManager
from jupyter_staging.engine.models import CreateJob, DescribeJob, JobState
from jupyter_staging.engine.progress import LiveProgress
from jupyter_staging.engine.taskoutcomes import on_worker
from jupyter_staging.engine.tasks import RUN, TaskContext
from jupyter_staging.engine.taskset import JobTasks
from jupyter_staging.errors import ChecksumMismatch
from jupyter_staging.safety.control import JobControl
from jupyter_staging.sources.registry import open_source
from tests.helpers.dask import dask_manager
from tests.helpers.data import sha256, wait_until

FINAL = {JobState.succeeded, JobState.failed, JobState.cancelled, JobState.paused}


@pytest.fixture
def manager(tmp_path: Path, cluster: LocalCluster) -> Iterator[StagingManager]:
    with dask_manager(
        tmp_path / "root", cluster.scheduler_address, source_roots=[str(tmp_path / "src")]
    ) as made:
        yield made


def small_files(folder: Path, count: int, *, big: int = 0) -> dict[str, str]:
    """``count`` files of 1-8 KiB (and ``big`` files just over :data:`GROUPED_BYTES`) in ``folder``;
    returns name -> sha256."""
    folder.mkdir(parents=True)
    sums = {}
    for i in range(count + big):
        data = os.urandom(GROUPED_BYTES + 1 if i >= count else 1024 * (1 + i % 8))
        name = f"lc-{i:05d}.fits" if i < count else f"big-{i}.fits"
        (folder / name).write_bytes(data)
        sums[name] = hashlib.sha256(data).hexdigest()
    return sums


def finished(manager: StagingManager, job_id: str) -> DescribeJob | None:
    job = manager.get(job_id)
    return job if job.state in FINAL else None


def log_text(manager: StagingManager, job_id: str) -> str:
    return "\n".join(line["message"] for line in manager.job_log(job_id))


def staged(folder: Path) -> dict[str, str]:
    """name -> sha256 of the files in ``folder``, its ``manifest.json`` left out."""
    return {p.name: sha256(p) for p in folder.iterdir() if p.is_file() and p.name != "manifest.json"}


def test_a_folder_of_small_files_goes_as_tasks_of_several_files(tmp_path, manager):
    sums = small_files(tmp_path / "src" / "sector", 300, big=2)
    job, _ = manager.create(CreateJob(source=str(tmp_path / "src" / "sector"), destination="sector"))
    done = wait_until(lambda: finished(manager, job.id), timeout=180, what="the job to end")
    assert done.state == JobState.succeeded, done.error
    out = tmp_path / "root" / "sector"
    assert staged(out) == sums
    assert not [p for p in out.iterdir() if p.name.endswith(".part")]
    objects = manager.manifest(job.id)["objects"]
    assert {o["path"].rsplit("/", 1)[-1]: o["sha256"] for o in objects} == sums
    assert done.progress.chunks_done == len(sums)
    # 302 files: 4 per group (at least 64 tasks), the two over GROUPED_BYTES a task each.
    assert files_per_group(302) == 4
    assert "300 small files as 75 Dask tasks of up to 4 files" in log_text(manager, job.id)


def test_a_paused_folder_resumes_and_every_file_is_staged_once(tmp_path, manager):
    sums = small_files(tmp_path / "src" / "many", 3000)
    job, _ = manager.create(CreateJob(source=str(tmp_path / "src" / "many"), destination="many"))
    wait_until(lambda: manager.get(job.id).progress.chunks_done >= 64, timeout=120, what="files staged")
    manager.pause(job.id)
    paused = wait_until(lambda: finished(manager, job.id), timeout=60, what="the pause")
    assert paused.state == JobState.paused, paused.error
    assert paused.progress.chunks_done < len(sums)
    manager.resume(job.id)
    done = wait_until(lambda: finished(manager, job.id), timeout=300, what="the resumed job")
    assert done.state == JobState.succeeded, done.error
    out = tmp_path / "root" / "many"
    assert staged(out) == sums
    assert not [p for p in out.iterdir() if p.name.endswith(".part")]
    assert len(manager.manifest(job.id)["objects"]) == len(sums)


def test_a_group_that_failed_part_way_takes_back_what_it_published_when_run_again(tmp_path, cluster):
    """The first try fails at its third file (a wrong expected checksum): the two before stay published,
    nothing is published at the third's name or after. Run again, the group takes the first two back
    (the same files, not fetched again) and stages the rest."""
    src = tmp_path / "src"
    sums = small_files(src, 5)
    (tmp_path / "out").mkdir()
    source = open_source(str(src))
    items = sorted(source.list_items(), key=lambda item: item.name)
    names = [item.name for item in items]
    ctx = TaskContext("job-groups", str(tmp_path), batch="b1")
    with Client(cluster, set_as_default=False) as client:
        Variable(ctx.control_key, client=client).set(RUN)
        Variable(ctx.run_key, client=client).set(ctx.attempt)

        def entries(wrong: bool) -> list:
            return [
                (item, f"out/{item.name}", {"sha256": "0" * 64} if wrong and i == 2 else {}, None)
                for i, item in enumerate(items)
            ]

        first = client.submit(on_worker, fetch_items, ctx, str(src), None, entries(True), pure=False)
        failed = first.result()
        assert isinstance(failed.error, ChecksumMismatch)
        assert sorted(os.listdir(tmp_path / "out")) == names[:2]
        inodes = {name: (tmp_path / "out" / name).stat().st_ino for name in names[:2]}

        again = client.submit(on_worker, fetch_items, ctx, str(src), None, entries(False), pure=False)
        results = again.result()
    assert [sha for _, sha in results] == [sums[name] for name in names]
    assert [size for size, _ in results] == [(src / name).stat().st_size for name in names]
    assert staged(tmp_path / "out") == sums
    assert {name: (tmp_path / "out" / name).stat().st_ino for name in names[:2]} == inodes


def test_groups_hold_at_most_their_files_and_bytes():
    grouping: Grouping[int] = Grouping(3)
    got = [grouping.add(i, 1) for i in range(7)]
    assert [g for g in got if g] == [[0, 1, 2], [3, 4, 5]]
    assert grouping.drain() == [6] and grouping.drain() is None and grouping.count == 3
    by_bytes: Grouping[str] = Grouping(32)
    assert by_bytes.add("a", 40 * 1024**2) is None
    assert by_bytes.add("b", 40 * 1024**2) == ["a"]  # 80 MiB would pass GROUP_BYTES
    assert by_bytes.add("c", 1) is None
    assert by_bytes.drain() == ["b", "c"]
    assert [files_per_group(n) for n in (1, 127, 128, 300, 2000, 20000)] == [1, 1, 2, 4, 31, 32]


def test_a_group_run_again_counts_the_files_it_takes_back_in_the_jobs_bytes(tmp_path, cluster):
    """A task run again counts from zero (the server takes back what its earlier try reported:
    ``JobTasks._counted_once``), so a group run again must count the files it takes back too. Before, it
    counted only those it fetched: the bytes of the files its first try published vanished from the job's
    progress (bytes_done went back by them while the job ran, and a paused or failed job kept the lower
    figure). The second try runs under the same task key, as Dask's retry of it does."""
    src = tmp_path / "src"
    sums = small_files(src, 5)
    total = sum((src / name).stat().st_size for name in sums)
    (tmp_path / "out").mkdir()
    items = sorted(open_source(str(src)).list_items(), key=lambda item: item.name)
    ctx = TaskContext("job-group-bytes", str(tmp_path), batch="b1")
    live = LiveProgress()
    key = "staging-fetch_items-group-bytes"

    def entries(wrong: bool) -> list:
        return [
            (item, f"out/{item.name}", {"sha256": "0" * 64} if wrong and i == 2 else {}, None)
            for i, item in enumerate(items)
        ]

    with Client(cluster, set_as_default=False) as client:
        job = JobTasks(client, ctx, JobControl(), live, lambda: None)
        Variable(ctx.control_key, client=client).set(RUN)
        try:
            first = client.submit(on_worker, fetch_items, ctx, str(src), None, entries(True), key=key)
            assert isinstance(first.result().error, ChecksumMismatch)
            first.release()
            del first
            wait_until(
                lambda: not client.run_on_scheduler(lambda dask_scheduler: key in dask_scheduler.tasks),
                timeout=30,
                what="the first try to be forgotten",
            )
            again = client.submit(on_worker, fetch_items, ctx, str(src), None, entries(False), key=key)
            assert [sha for _, sha in again.result()] == [sums[item.name] for item in items]
            deadline = time.monotonic() + 15
            while live.bytes_done != total and time.monotonic() < deadline:  # events come as they come
                time.sleep(0.05)
            assert live.bytes_done == total
        finally:
            job.close()


def test_a_rerun_groups_only_the_files_it_fetches(tmp_path, manager):
    """A re-run of a folder of 302 files of which 150 changed takes the 152 others from the output it
    replaces (no task) and fetches the 150 in groups made for 150 files (2 each, 75 tasks: at least
    ``MIN_TASKS``), not for 302 (4 each, 38 tasks)."""
    folder = tmp_path / "src" / "sector"
    small_files(folder, 302)
    body = CreateJob(source=str(folder), destination="sector")
    first, _ = manager.create(body)
    assert wait_until(lambda: finished(manager, first.id), timeout=180).state == JobState.succeeded
    changed = sorted(folder.iterdir())[::2][:150]
    for path in changed:
        path.write_bytes(os.urandom(2048))
    sums = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()}
    again, created = manager.create(body)
    assert created
    done = wait_until(lambda: finished(manager, again.id), timeout=180, what="the re-run")
    assert done.state == JobState.succeeded, done.error
    assert staged(tmp_path / "root" / "sector") == sums
    assert "150 small files as 75 Dask tasks of up to 2 files" in log_text(manager, again.id)
