"""The folder jobs write below (the server's ``root_dir``) gone while the server runs: a job fails with
``destination_unavailable`` and a message without a traceback, writes nothing, and the same request
succeeds once the folder is back. A real :class:`StagingManager` and real folders; nothing is mocked."""

from __future__ import annotations

import os
import shutil
import tarfile
from pathlib import Path

import pytest

from jupyter_staging.engine.models import CreateJob, JobState
from tests.engine.test_scale import make_files
from tests.helpers.data import KEPLER
from tests.helpers.managers import manager_for


def requests_of(kind: str, tmp_path: Path) -> CreateJob:
    """A request of each kind of writer: a folder copied, hard-linked, symlinked; a FITS table converted
    to Parquet, a tar archive of the folder unpacked (each writes through its own confined writer)."""
    if kind == "convert":
        return CreateJob(source=str(KEPLER), destination="out", convert={"format": "parquet"})
    if kind == "unpack":
        archive = tmp_path / "sector.tar.gz"
        if not archive.exists():
            with tarfile.open(archive, "w:gz") as tar:
                tar.add(tmp_path / "sector", arcname="sector")
        return CreateJob(source=str(archive), destination="out", unpack=True)
    return CreateJob(source=str(tmp_path / "sector"), destination="out", method=kind)


@pytest.mark.parametrize("kind", ["copy", "hardlink", "symlink", "convert", "unpack"])
def test_a_root_removed_under_the_server_fails_the_job_clearly_and_nothing_is_lost(tmp_path: Path, kind: str):
    sums = make_files(tmp_path / "sector", 5)
    root = tmp_path / "root"
    root.mkdir()
    mgr = manager_for(tmp_path)
    try:
        shutil.rmtree(root)
        job, _ = mgr.create(requests_of(kind, tmp_path))
        failed = mgr.wait(job.id, timeout=60)
        assert not root.exists()  # nothing was made where the root was
        root.mkdir()
        again, created = mgr.create(requests_of(kind, tmp_path))
        done = mgr.wait(again.id, timeout=60)
    finally:
        mgr.stop()
    assert failed.state == JobState.failed
    assert failed.error is not None and failed.error.code == "destination_unavailable", failed.error
    assert str(root) in failed.error.message and "Traceback" not in failed.error.message
    assert created and done.state == JobState.succeeded, done
    assert sorted(os.listdir(tmp_path / "sector")) == sorted(sums)  # the source is untouched
    if kind == "convert":
        assert "manifest.json" in os.listdir(root / "out")
        assert any(name.endswith(".parquet") for name in os.listdir(root / "out"))
    elif kind == "unpack":
        unpacked = {p.name for p in (root / "out").rglob("*") if p.is_file()}
        assert unpacked == {*sums, "manifest.json"}
    else:
        assert sorted(os.listdir(root / "out")) == sorted([*sums, "manifest.json"])
