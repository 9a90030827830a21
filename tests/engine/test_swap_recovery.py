"""A server that dies while a re-run's output is swapped in (issue 10's swap, DESIGN.md "Re-running a
notebook"): the next server finishes the swap from where it stopped, before anything else, and the job
succeeds with the new output in place, the user's edits and files kept, and nothing left beside it.

Before, a run after a stop between the swap's two renames, or after them, failed on the scratch folder
that was gone (or staged everything again into a new one), and the old folder stayed hidden as
``.replaced-<id8>`` with the user's files in it.

Each case runs the re-run in a server of its own (a child process) that dies as a kill would at a chosen
call, then resumes it in the next server on the same job database (:mod:`tests.helpers.crashes`).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from jupyter_staging.engine.models import CreateJob, JobState
from jupyter_staging.engine.store import Store
from jupyter_staging.engine.swap import too_late
from jupyter_staging.errors import InvalidState
from jupyter_staging.safety.dirfd import set_aside_name
from tests.engine.test_recovered_copies import staged_once
from tests.helpers.crashes import killed_part_way, resumed
from tests.helpers.data import KEPLER, SPITZER, TESS, sha256
from tests.helpers.managers import manager_for, unstarted_manager
from tests.helpers.space import small_file_system


def staged_and_edited(tmp_path: Path, edited: Path = KEPLER, changed: Path = TESS) -> tuple[dict, str]:
    """Stage ``lcs/`` (copies of the FITS file ``edited`` and of ``changed``) into ``out`` once, then as a
    notebook would: update the staged FITS header in place (same size), add a file of the user's, and add
    bytes to the ``changed`` source so that the same request stages again. Returns ``(the request, the
    first job's id)``."""
    from astropy.io import fits

    (tmp_path / "root").mkdir(exist_ok=True)
    source = tmp_path / "lcs"
    source.mkdir()
    for src in (edited, changed):
        shutil.copyfile(src, source / src.name)
    request = {"source": str(source), "destination": "out"}
    first_id = staged_once(tmp_path, request)
    out = tmp_path / "root" / "out"
    with fits.open(out / edited.name, mode="update") as hdul:
        hdul[0].header["OBSERVER"] = "someone"
    (out / "notes.txt").write_text("my notes\n")
    with open(source / changed.name, "ab") as fh:
        fh.write(b"a new release\n")
    return request, first_id


@pytest.mark.parametrize(
    "exit_at, left",
    [
        ("Confined.rename:1", {"old", "scratch"}),  # the swap recorded as started, nothing moved yet
        ("Confined.rename:2", {"aside", "scratch"}),  # between the two renames: no folder at ``out``
        ("swap._carry_over:1", {"new", "aside"}),  # both renamed, nothing carried over yet
        ("runner.kept_lines:1", {"new"}),  # swapped in whole, not recorded done
    ],
)
def test_a_server_dying_during_the_swap_leaves_it_finished_by_the_next(
    tmp_path: Path, exit_at: str, left: set
):
    request, first_id = staged_and_edited(tmp_path)
    root, edited = tmp_path / "root", sha256(tmp_path / "root" / "out" / KEPLER.name)
    job_id = killed_part_way(tmp_path, request, exit_at=exit_at)
    suffix = job_id[:8]
    there = {
        name
        for name, path in {
            "aside": root / f".replaced-{suffix}",
            "scratch": root / f".out.staging-{suffix}",
        }.items()
        if path.exists()
    }
    if (root / "out").exists():
        there.add(
            "new" if json.loads((root / "out" / "manifest.json").read_text())["job_id"] == job_id else "old"
        )
    assert there == left, "the server died elsewhere than planned: nothing was tested"
    done, chunks, log = resumed(tmp_path, job_id)
    assert done.state == JobState.succeeded, done.error
    out = root / "out"
    assert sha256(out / TESS.name) == sha256(tmp_path / "lcs" / TESS.name)
    assert sha256(out / KEPLER.name) == sha256(KEPLER)
    assert sha256(out / set_aside_name(KEPLER.name, suffix)) == edited
    assert (out / "notes.txt").read_text() == "my notes\n"
    assert sorted(p.name for p in root.iterdir()) == ["out"]  # no scratch, no .replaced-<id8>
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [KEPLER.name, TESS.name, "manifest.json", "notes.txt", set_aside_name(KEPLER.name, suffix)]
    )
    assert all(c.state == "ready" for c in chunks) and len(chunks) == 2
    assert "finishing the swap" in log
    before_the_stop = (
        f"kept under another name before the server stopped: {set_aside_name(KEPLER.name, suffix)}"
    )
    assert (before_the_stop in log) == (exit_at == "runner.kept_lines:1"), log  # else listed as it was kept
    manager = manager_for(tmp_path)
    try:
        assert manager.get(first_id).state == JobState.expired
        again, created = manager.create(CreateJob(**request))
        assert not created and again.up_to_date and again.id == job_id
    finally:
        manager.stop()


def tree(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))


def test_a_merge_into_a_mount_point_stopped_part_way_is_finished_by_the_next_server(tmp_path: Path):
    """The destination is a mount point (a tmpfs), so the new output moves in file by file; the server dies
    after the first file moved. The next server moves the rest, keeps the edited file and the user's, and
    ends the job ``succeeded``, nothing staged again and nothing left inside the folder."""
    rosat = SPITZER.with_name("allsky_rosat.fits")
    out = tmp_path / "root" / "out"
    with small_file_system(out):
        request, _ = staged_and_edited(tmp_path, edited=rosat, changed=SPITZER)
        edited = sha256(out / rosat.name)
        job_id = killed_part_way(tmp_path, request, exit_at="swap._move_in:2")
        suffix = job_id[:8]
        assert f".staging-{suffix}" in os.listdir(out), "the server died elsewhere than planned"
        done, _, log = resumed(tmp_path, job_id)
        assert done.state == JobState.succeeded, done.error
        assert "finishing the swap" in log
        kept = set_aside_name(rosat.name, suffix)
        assert tree(out) == sorted([rosat.name, SPITZER.name, "manifest.json", "notes.txt", kept])
        assert sha256(out / rosat.name) == sha256(rosat) and sha256(out / kept) == edited
        assert sha256(out / SPITZER.name) == sha256(tmp_path / "lcs" / SPITZER.name)
        assert (out / "notes.txt").read_text() == "my notes\n"
        assert sorted(p.name for p in (tmp_path / "root").iterdir()) == ["out"]


@pytest.mark.parametrize(
    "exit_at, requested",
    [
        ("Confined.rename:2", "cancelled"),  # between the two renames: no folder at ``out``
        ("Confined.rename:2", "paused"),
        ("runner.format_bytes:2", "cancelled"),  # swapped in and recorded done; the job not ended yet
    ],
)
def test_a_cancel_or_pause_once_the_swap_started_comes_too_late(tmp_path: Path, exit_at: str, requested: str):
    """The server dies once the swap has started, with a cancel (or pause) recorded for the job: the next
    server does not honour it (the output is complete: a cancel removed the new output as partial, and
    left the old one hidden or none at all), finishes the job, and it succeeds; its log says why. Asked of
    the job while no server runs it, a cancel or pause is answered at once, and changes nothing: the pause
    is refused (409 ``swap_in_progress``)."""
    request, _ = staged_and_edited(tmp_path)
    job_id = killed_part_way(tmp_path, request, exit_at=exit_at)
    store = Store(f"sqlite:///{tmp_path / 'jobs.sqlite'}")
    try:
        store.update_job(job_id, load_resume=False, requested=requested)
    finally:
        store.close()
    idle = unstarted_manager(tmp_path / "root", tmp_path)
    try:
        assert idle.cancel(job_id).state == JobState.running  # as the stopped server left it
        with pytest.raises(InvalidState) as refused:  # a 200 would say it pauses: it goes on to succeed
            idle.pause(job_id)
        assert refused.value.code == "swap_in_progress"
        assert idle.get(job_id).state == JobState.running
    finally:
        idle.stop()
    done, _, log = resumed(tmp_path, job_id)
    assert done.state == JobState.succeeded, done.error
    assert too_late(requested) in log and too_late("cancelled") in log and too_late("paused") in log
    root = tmp_path / "root"
    assert sorted(p.name for p in root.iterdir()) == ["out"]
    assert (root / "out" / "notes.txt").read_text() == "my notes\n"
    assert sha256(root / "out" / TESS.name) == sha256(tmp_path / "lcs" / TESS.name)
    assert done.progress.bytes_done == TESS.stat().st_size + len(b"a new release\n") + KEPLER.stat().st_size


def test_a_manifest_job_with_a_failed_entry_stopped_during_the_swap_ends_partial_with_its_bytes(
    tmp_path: Path,
):
    """A manifest job whose Kepler entry has a wrong checksum ends ``partial``; the same request runs again
    after the TESS source changed, replacing that output, and dies between the swap's renames. The next
    server ends it ``partial`` as the stopped run would have, its failed entry as the manifest records it,
    and its bytes counted as a run that did not stop counts them (they were 0)."""
    (tmp_path / "root").mkdir()
    for src in (KEPLER, TESS):
        shutil.copyfile(src, tmp_path / src.name)
    entries = {"k": {"source": str(tmp_path / KEPLER.name), "checksum": "sha256:" + "0" * 64}}
    request = {"manifest": {**entries, "t": str(tmp_path / TESS.name)}, "destination": "out"}
    manager = manager_for(tmp_path)
    try:
        first, _ = manager.create(CreateJob(**request))
        done = manager.wait(first.id, timeout=120)
        assert done.error is not None and done.error.code == "partial", done
        first_bytes = done.progress.bytes_done
    finally:
        manager.stop()
    with open(tmp_path / TESS.name, "ab") as fh:
        fh.write(b"a new release\n")
    job_id = killed_part_way(tmp_path, request, exit_at="Confined.rename:2")
    done, _, log = resumed(tmp_path, job_id)
    assert done.state == JobState.failed and done.error is not None and done.error.code == "partial", done
    assert "finishing the swap" in log
    assert done.progress.bytes_done == first_bytes + len(b"a new release\n")  # as a run not stopped counts
    manifest = json.loads((tmp_path / "root" / "out" / "manifest.json").read_text())
    assert manifest["job_id"] == job_id
    assert {e["name"]: (e["error"] or {}).get("code") for e in manifest["entries"]} == {
        "k": "checksum_mismatch",
        "t": None,
    }
