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
import shutil
from pathlib import Path

import pytest

from jupyter_staging.engine.models import CreateJob, JobState
from jupyter_staging.safety.dirfd import set_aside_name
from tests.helpers.crashes import killed_part_way, resumed
from tests.helpers.data import KEPLER, TESS, sha256
from tests.helpers.managers import manager_for


def staged_and_edited(tmp_path: Path) -> tuple[dict, str]:
    """Stage ``lcs/`` (Kepler and TESS light curves) into ``out`` once, then as a notebook would: update
    the staged Kepler header in place (same size), add a file of the user's, and change the TESS source so
    that the same request stages again. Returns ``(the request, the first job's id)``."""
    from astropy.io import fits

    (tmp_path / "root").mkdir()
    source = tmp_path / "lcs"
    source.mkdir()
    for src in (KEPLER, TESS):
        shutil.copyfile(src, source / src.name)
    request = {"source": str(source), "destination": "out"}
    manager = manager_for(tmp_path)
    try:
        first, _ = manager.create(CreateJob(**request))
        assert manager.wait(first.id, timeout=120).state == JobState.succeeded
    finally:
        manager.stop()
    out = tmp_path / "root" / "out"
    with fits.open(out / KEPLER.name, mode="update") as hdul:
        hdul[0].header["OBSERVER"] = "someone"
    (out / "notes.txt").write_text("my notes\n")
    with fits.open(source / TESS.name, mode="update") as hdul:
        hdul[0].header["OBJECT"] = "a new release"
    return request, first.id


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
    assert "finishing that first" in log or exit_at == "Confined.rename:1"
    manager = manager_for(tmp_path)
    try:
        assert manager.get(first_id).state == JobState.expired
        again, created = manager.create(CreateJob(**request))
        assert not created and again.up_to_date and again.id == job_id
    finally:
        manager.stop()
