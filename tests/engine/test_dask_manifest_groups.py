"""A manifest of many single files on a Dask cluster: its entries' files go as tasks of several files each
(:mod:`jupyter_staging.engine.spreadentries`), on a real ``LocalCluster`` (two worker processes on
127.0.0.1) writing into ``tmp_path``, with a real manager in this process.

Before, each entry was a batch of its own, ``concurrent_items`` at a time: a manifest of 1,000 local files
of 64 KiB staged at about 60 files/s on two local workers, one task per file (figures in bench/README.md).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from distributed import LocalCluster

from jupyter_staging.engine.manager import StagingManager
from jupyter_staging.engine.models import CreateJob, DescribeJob, JobState
from tests.helpers.dask import dask_manager
from tests.helpers.data import sha256, wait_until
from tests.helpers.servers import RangeHTTPServer

FINAL = {JobState.succeeded, JobState.failed, JobState.cancelled, JobState.paused}


@pytest.fixture
def manager(tmp_path: Path, cluster: LocalCluster) -> Iterator[StagingManager]:
    with dask_manager(
        tmp_path / "root", cluster.scheduler_address, source_roots=[str(tmp_path / "src")]
    ) as made:
        yield made


def light_curves(folder: Path, count: int, *, kib: int = 0) -> dict[str, str]:
    """``count`` files in ``folder`` (``kib`` KiB each, else 1-8 KiB); returns file name -> sha256."""
    folder.mkdir(parents=True, exist_ok=True)
    sums = {}
    for i in range(count):
        data = os.urandom(1024 * (kib or 1 + i % 8))
        name = f"lc-{i:05d}.fits"
        (folder / name).write_bytes(data)
        sums[name] = hashlib.sha256(data).hexdigest()
    return sums


def entry_of(name: str) -> str:
    return "e" + name[3:8]


def manifest_with_checksums(folder: Path, sums: dict[str, str], wrong: str | None = None) -> dict:
    """One entry per file (``eNNNNN``: its local path and its sha256; ``wrong``: that file's is not)."""
    return {
        entry_of(name): {
            "source": str(folder / name),
            "checksum": f"sha256:{'0' * 64 if name == wrong else sha}",
        }
        for name, sha in sums.items()
    }


def finished(manager: StagingManager, job_id: str) -> DescribeJob | None:
    job = manager.get(job_id)
    return job if job.state in FINAL else None


def log_text(manager: StagingManager, job_id: str) -> str:
    return "\n".join(line["message"] for line in manager.job_log(job_id))


def staged(out: Path) -> dict[str, str]:
    """file name -> sha256 of the files in the entry folders of ``out``; asserts that no ``.part`` is left."""
    files = [p for p in out.rglob("*") if p.is_file() and p.name != "manifest.json"]
    assert not [p for p in files if p.name.endswith(".part")]
    return {p.name: sha256(p) for p in files}


def test_a_manifest_of_single_files_goes_as_tasks_of_several_files(tmp_path, manager):
    folder = tmp_path / "src" / "mast"
    sums = light_curves(folder, 300)
    body = CreateJob(manifest=manifest_with_checksums(folder, sums), destination="mast")
    job, _ = manager.create(body)
    done = wait_until(lambda: finished(manager, job.id), timeout=180, what="the job to end")
    assert done.state == JobState.succeeded, done.error
    out = tmp_path / "root" / "mast"
    assert staged(out) == sums
    for name in sums:  # each at its own entry's name
        assert (out / entry_of(name) / name).is_file()
    objects = manager.manifest(job.id)["objects"]
    assert {(o["entry"], o["path"].rsplit("/", 1)[-1], o["sha256"]) for o in objects} == {
        (entry_of(n), n, s) for n, s in sums.items()
    }
    assert done.progress.chunks_done == len(sums)
    assert done.progress.bytes_done == sum((folder / n).stat().st_size for n in sums)
    # 300 entries of one file each: 4 per task (at least 64 tasks), not 300 tasks.
    assert "300 single-file entries as 75 Dask tasks of up to 4 files" in log_text(manager, job.id)


def test_a_bad_checksum_fails_its_entry_alone_with_its_code(tmp_path, manager):
    folder = tmp_path / "src" / "mast"
    sums = light_curves(folder, 300)
    bad = "lc-00150.fits"
    body = CreateJob(manifest=manifest_with_checksums(folder, sums, wrong=bad), destination="mast")
    job, _ = manager.create(body)
    done = wait_until(lambda: finished(manager, job.id), timeout=180, what="the job to end")
    assert done.state == JobState.failed and done.error is not None and done.error.code == "partial"
    out = tmp_path / "root" / "mast"
    assert staged(out) == {n: s for n, s in sums.items() if n != bad}
    assert not (out / entry_of(bad)).exists() or not any((out / entry_of(bad)).iterdir())
    entries = {e["name"]: e for e in manager.manifest(job.id)["entries"]}
    assert entries[entry_of(bad)]["error"]["code"] == "checksum_mismatch"
    assert [n for n, e in entries.items() if e["error"]] == [entry_of(bad)]
    assert done.progress.chunks_done == len(sums) - 1
    assert "single-file entries as 75 Dask tasks" in log_text(manager, job.id)

    # Alone in its manifest, the entry's failure is the job's, with the entry's code.
    alone, _ = manager.create(
        CreateJob(manifest=manifest_with_checksums(folder, {bad: sums[bad]}, wrong=bad), destination="one")
    )
    ended = wait_until(lambda: finished(manager, alone.id), timeout=120, what="the job to end")
    assert ended.state == JobState.failed and ended.error is not None
    assert ended.error.code == "checksum_mismatch"


def test_a_group_that_keeps_failing_is_split_and_only_the_entry_at_fault_fails(tmp_path, manager):
    """An entry whose server cuts every body short (HEAD states the full size) fails ``size_mismatch``
    on every try, an error that may pass, so its group is run again, then split into tasks of one file:
    the other entries of its group are staged (those published by the group's tries taken back, not
    counted twice), and only that entry fails, with the code it has on its own."""
    folder = tmp_path / "src" / "mast"
    sums = light_curves(folder, 200)
    served = tmp_path / "served"
    served.mkdir()
    (served / "cut.fits").write_bytes(os.urandom(4096))
    with RangeHTTPServer(served) as server:
        server.truncate_get_to = 1000
        manifest: dict = {entry_of(n): str(folder / n) for n in list(sums)[:100]}
        manifest["remote"] = server.url("cut.fits")
        manifest.update({entry_of(n): str(folder / n) for n in list(sums)[100:]})
        job, _ = manager.create(CreateJob(manifest=manifest, destination="mast"))
        done = wait_until(lambda: finished(manager, job.id), timeout=240, what="the job to end")
    assert done.state == JobState.failed and done.error is not None and done.error.code == "partial"
    out = tmp_path / "root" / "mast"
    assert staged(out) == sums
    entries = {e["name"]: e for e in manager.manifest(job.id)["entries"]}
    assert [n for n, e in entries.items() if e["error"]] == ["remote"]
    assert entries["remote"]["error"]["code"] == "size_mismatch"
    log = log_text(manager, job.id)
    assert "201 single-file entries as 67 Dask tasks of up to 3 files" in log
    assert "a Dask task of 3 entries failed" in log
    assert done.progress.chunks_done == len(sums)
    total = sum((folder / n).stat().st_size for n in sums)
    # The files the failed group's tries published count once (its progress is taken back before its
    # files go again); beyond them, at most what the failing entry's last try got, as on its own.
    assert total <= done.progress.bytes_done <= total + 1000


def test_a_paused_manifest_resumes_and_every_entry_is_staged_once(tmp_path, manager):
    folder = tmp_path / "src" / "mast"
    sums = light_curves(folder, 1000, kib=256)
    job, _ = manager.create(CreateJob(manifest=manifest_with_checksums(folder, sums), destination="mast"))
    wait_until(lambda: manager.get(job.id).progress.chunks_done >= 64, timeout=120, what="files staged")
    manager.pause(job.id)
    paused = wait_until(lambda: finished(manager, job.id), timeout=60, what="the pause")
    assert paused.state == JobState.paused, paused.error
    assert paused.progress.chunks_done < len(sums)
    manager.resume(job.id)
    done = wait_until(lambda: finished(manager, job.id), timeout=300, what="the resumed job")
    assert done.state == JobState.succeeded, done.error
    assert staged(tmp_path / "root" / "mast") == sums
    assert len(manager.manifest(job.id)["objects"]) == len(sums)
    assert done.progress.chunks_done == len(sums)
    assert done.progress.bytes_done == 1000 * 256 * 1024


def test_a_rerun_reuses_unchanged_entries_and_groups_only_the_changed(tmp_path, manager):
    folder = tmp_path / "src" / "mast"
    sums = light_curves(folder, 300)
    body = CreateJob(manifest={entry_of(n): str(folder / n) for n in sums}, destination="mast")
    first, _ = manager.create(body)
    assert wait_until(lambda: finished(manager, first.id), timeout=180).state == JobState.succeeded
    changed = sorted(sums)[::2]
    for name in changed:
        (folder / name).write_bytes(os.urandom(2048))
    sums = {p.name: sha256(p) for p in folder.iterdir()}
    again, created = manager.create(body)
    assert created
    done = wait_until(lambda: finished(manager, again.id), timeout=180, what="the re-run")
    assert done.state == JobState.succeeded, done.error
    assert staged(tmp_path / "root" / "mast") == sums
    assert "150 single-file entries as 75 Dask tasks of up to 2 files" in log_text(manager, again.id)
