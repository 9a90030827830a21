"""An ack of a replacing job's own chunk while that job swaps its output in (a consumer acking each file as
the job ends): the ack finds the job's scratch folder in its resume data, the swap moves the folder's files
into the job's destination, and the ack then deletes at the scratch path.

The race is made deterministic as in ``test_ack_races``: the real swap runs inside the ack, right after the
ack has found where the job's files are; managers, files and the SQLite job database are real.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from jupyter_staging.engine import runner, swap
from jupyter_staging.engine.manager import StagingManager
from jupyter_staging.engine.models import ChunkState, CreateJob, JobState
from tests.helpers.data import KEPLER, SPITZER, TESS
from tests.helpers.space import small_file_system


@pytest.mark.parametrize("mount_point", [False, True], ids=["renamed", "merged"])
def test_an_ack_during_the_jobs_own_swap_deletes_the_file_where_the_swap_put_it(
    manager: StagingManager, archive: Path, monkeypatch: pytest.MonkeyPatch, mount_point: bool
) -> None:
    """Job A (``delete_on_ack``) of two entries; its request runs again after one source changed: job B
    stages beside A's output and swaps its folder in. An ack of B's chunk that found B's scratch folder just
    before the swap answered ``acked`` and deleted nothing (the file had moved): the file stayed in ``d``,
    and once every chunk was acked B was ``expired`` with that file of its output still in the folder. The
    ack deletes the file where the swap put it now, and the folder goes with the job (a mount point, whose
    files the swap moves in one by one, stays, empty)."""
    src = archive / "lc.fits"
    shutil.copyfile(KEPLER, src)
    body = {
        "manifest": {"k": str(src), "s": str(archive / SPITZER.name)},
        "destination": "d",
        "cleanup_policy": "delete_on_ack",
    }
    out = manager.root_dir / "d"
    with small_file_system(out) if mount_point else contextlib.nullcontext(out):
        ack_during_the_swap(manager, monkeypatch, src, body)
        assert not out.exists() or not any(out.iterdir()), sorted(str(p) for p in out.rglob("*"))


def ack_during_the_swap(
    manager: StagingManager, monkeypatch: pytest.MonkeyPatch, src: Path, body: dict
) -> None:
    """Job A of ``body``, then B of it after ``src`` changed, B's chunk of ``src`` acked during B's swap
    (found in B's scratch folder, deleted after the swap); then B's other chunks, which expire B."""
    first, _ = manager.create(CreateJob(**body))
    assert manager.wait(first.id, timeout=60).state == JobState.succeeded
    shutil.copyfile(TESS, src)
    os.utime(src)
    swap_in, answers = runner.swap_in, []
    folders = manager._ack_folders
    find = folders.destination

    def swap_within_an_ack(*args: Any, **kwargs: Any) -> Any:
        (job,) = [j for j in manager.store.list_jobs(states=["running"], resume=False)]
        (chunk,) = [c for c in manager.store.list_chunks(job.id) if c.path.endswith("lc.fits")]
        done: list[Any] = []

        def found_then_swapped(host: Any, rec: Any) -> Any:
            where = find(host, rec)
            if not done and rec.id == job.id:
                done.append(swap_in(*args, **kwargs))  # the swap, right after the ack found the folder
            return where

        monkeypatch.setattr(folders, "destination", found_then_swapped)
        try:
            answers.append((job.id, chunk.index, manager.ack(job.id, str(chunk.index))))
        finally:
            monkeypatch.setattr(folders, "destination", find)
        (result,) = done
        return result

    monkeypatch.setattr(runner, "swap_in", swap_within_an_ack)
    second, created = manager.create(CreateJob(**body))
    assert created and manager.wait(second.id, timeout=60).state == JobState.succeeded
    ((job_id, index, answer),) = answers
    assert job_id == second.id
    assert answer.state == ChunkState.acked
    out = manager.root_dir / "d"
    assert not (out / "k" / "lc.fits").exists(), "the acked file stayed in the job's folder"
    for chunk in manager.chunks(second.id):
        if chunk.index != index:
            manager.ack(second.id, str(chunk.index))
    assert manager.get(second.id).state == JobState.expired


@pytest.mark.parametrize("mount_point", [True, False], ids=["merged", "renamed"])
def test_an_ack_before_the_swap_leaves_no_old_file_at_its_name(
    manager: StagingManager, archive: Path, monkeypatch: pytest.MonkeyPatch, mount_point: bool
) -> None:
    """The destination is a mount point: a replacing job stages inside it and moves its files in one by one,
    each over the old output's file of that name. A file of the new job acked (and deleted) before the merge
    was not moved, so the old job's file of that name stayed under the new manifest (a folder renamed into
    place, the other case, never kept it)."""
    src = archive / "lc.fits"
    shutil.copyfile(KEPLER, src)
    mount = manager.root_dir / "mp"
    body = {
        "manifest": {"k": str(src), "s": str(archive / SPITZER.name)},
        "destination": "mp",
        "cleanup_policy": "delete_on_ack",
    }
    with small_file_system(mount) if mount_point else contextlib.nullcontext(mount):
        first, _ = manager.create(CreateJob(**body))
        assert manager.wait(first.id, timeout=60).state == JobState.succeeded
        shutil.copyfile(TESS, src)
        os.utime(src)
        swap_in, answers = runner.JobRunner._swap_in, []

        def ack_then_swap(self: Any, rec: Any) -> Any:  # the consumer acks as the job ends
            (chunk,) = [c for c in manager.store.list_chunks(rec.id) if c.path.endswith("lc.fits")]
            answers.append(manager.ack(rec.id, str(chunk.index)))
            return swap_in(self, rec)

        monkeypatch.setattr(runner.JobRunner, "_swap_in", ack_then_swap)
        second, created = manager.create(CreateJob(**body))
        assert created and manager.wait(second.id, timeout=60).state == JobState.succeeded
        (answer,) = answers
        assert answer.state == ChunkState.acked
        left = sorted(p.relative_to(mount).as_posix() for p in mount.rglob("*") if p.is_file())
        assert left == ["manifest.json", f"s/{SPITZER.name}"], left


def test_an_ack_during_a_merge_into_a_mount_point_does_not_fail_the_swap(
    manager: StagingManager, archive: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The merge into a mount point lists the scratch folder's files, then moves them in one by one; a
    consumer acking a file of the new job meanwhile deletes it in the scratch folder (the swap is not done).
    Its move failed ``FileNotFoundError``: the swap stopped half-way, and the job failed with the old
    manifest gone and half of each output in the folder."""
    folder = archive / "many"
    folder.mkdir()
    for i in range(4):
        (folder / f"lc-{i}.fits").write_bytes(bytes([i]) * 1000)
    mount = manager.root_dir / "mp"
    body = {"source": str(folder), "destination": "mp", "cleanup_policy": "delete_on_ack"}
    with small_file_system(mount):
        first, _ = manager.create(CreateJob(**body))
        assert manager.wait(first.id, timeout=60).state == JobState.succeeded
        (folder / "lc-0.fits").write_bytes(b"changed" * 100)
        move_in, acked = swap._move_in, []

        def ack_another_then_move(folder_rel: Any, name: str, *args: Any, **kwargs: Any) -> Any:
            if not acked:
                (job,) = manager.store.list_jobs(states=["running"], resume=False)
                other = [c for c in manager.store.list_chunks(job.id) if not c.path.endswith(name)][-1]
                acked.append((job.id, other.path, manager.ack(job.id, str(other.index))))
            return move_in(folder_rel, name, *args, **kwargs)

        monkeypatch.setattr(swap, "_move_in", ack_another_then_move)
        second, created = manager.create(CreateJob(**body))
        done = manager.wait(second.id, timeout=60)
        assert created and done.state == JobState.succeeded, done.error
        ((_, path, answer),) = acked
        assert answer.state == ChunkState.acked
        gone = Path(path).name
        left = sorted(p.name for p in mount.iterdir())
        assert left == sorted({"manifest.json"} | {f"lc-{i}.fits" for i in range(4)} - {gone}), left
