"""An archive with hidden members staged with ``unpack`` (a zip made on a Mac holds ``__MACOSX/._name`` and
``.DS_Store``; a tarball of a working folder holds ``.git/``): the job failed ``path_not_allowed`` after
extracting everything, as no job publishes a hidden name. Now the hidden members are not extracted, the job's
log says how many, and the rest, a Zarr store's metadata files included, is staged.

Real parts: a real :class:`StagingManager` with its SQLite job database; the Kepler light curve of
``../shared/data``.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

from jupyter_staging.engine.models import CreateJob
from tests.helpers.data import KEPLER_NAME
from tests.helpers.managers import manager_for


def test_an_archive_with_hidden_members_is_unpacked_without_them(tmp_path: Path, shared_data: Path):
    kepler = (shared_data / KEPLER_NAME).read_bytes()
    area = tmp_path / "area"
    area.mkdir()
    staged = {f"lc/{KEPLER_NAME}": kepler, "cube.zarr/.zattrs": b'{"units": "e-/s"}'}
    with zipfile.ZipFile(area / "from-a-mac.zip", "w") as zf:
        for name, data in staged.items():
            zf.writestr(name, data)
        zf.writestr(f"__MACOSX/lc/._{KEPLER_NAME}", b"resource fork")
        zf.writestr(".DS_Store", b"finder")
        zf.writestr(".git/config", b"[core]\n\tfsmonitor = touch owned\n")
    (tmp_path / "root").mkdir()
    mgr = manager_for(tmp_path, source_roots=[str(area)])
    try:
        job, _ = mgr.create(CreateJob(source=str(area / "from-a-mac.zip"), destination="out", unpack=True))
        done = mgr.wait(job.id, timeout=60)
        assert done.state.value == "succeeded", done.error
        out = tmp_path / "root" / "out" / "from-a-mac"
        found = {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()}
        assert found == staged
        log = [line["message"] for line in mgr.job_log(job.id)]
        assert any(
            "3 hidden member(s) of from-a-mac.zip not extracted: "
            f"'__MACOSX/lc/._{KEPLER_NAME}', '.DS_Store', '.git/config'" in line
            for line in log
        ), log
    finally:
        mgr.stop()
