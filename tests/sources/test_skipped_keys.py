"""Objects below an S3 prefix whose keys are not plain paths (``a//b`` from a join with a trailing slash,
``a/../b``, ``.``, a hidden ``.git/config``) are not staged, as documented; but the job said nothing: it
listed "5 file(s) to stage" and ended ``succeeded`` with 13 objects below the prefix, and the user had no way
to know a part was left out. Now its log names how many were left out and the first of them, whether the
runner listed the prefix, admission did (for its space check) or it is a manifest entry. A Zarr v2 store's
metadata files (``.zgroup``, ``.zarray``, ``.zattrs``) are data, not hidden settings: they are staged, as its
chunks are (a folder named like one is not).

Real parts: moto's S3 endpoint, a real :class:`StagingManager` with its SQLite job database.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from jupyter_staging.engine.models import CreateJob
from tests.helpers.managers import manager_for

PLAIN = {"p/ok.txt": b"ok", "p/q/r/s": b"s", "p/e": b"", "p/q/r/": b""}  # a folder marker: nothing to say
ZARR = {
    "p/.zgroup": b'{"zarr_format": 2}',
    "p/c.zarr/.zarray": b"{}",
    "p/c.zarr/.zattrs": b"{}",
    "p/c.zarr/0": b"0",
}
NOT_PLAIN = ["p/a//b", "p//x", "p/a/../b", "p/.", "p/./y", "p/..", "p/.git/config", "p/z/.zattrs/x"]


@pytest.mark.parametrize("space_check", [False, True], ids=["runner-lists", "admission-lists"])
@pytest.mark.parametrize("manifest", [False, True], ids=["source", "manifest-entry"])
def test_objects_left_out_of_a_prefix_are_named_in_the_job_log(
    tmp_path: Path, s3_env, space_check: bool, manifest: bool
):
    client, bucket = s3_env
    for key in [*PLAIN, *ZARR, *NOT_PLAIN]:
        client.put_object(Bucket=bucket, Key=key, Body={**PLAIN, **ZARR}.get(key, b"data"))
    (tmp_path / "root").mkdir()
    manager = manager_for(tmp_path, min_free_bytes=1 if space_check else 0)
    try:
        uri = f"s3://{bucket}/p/"
        body = {"manifest": {"lc": uri}} if manifest else {"source": uri}
        job, _ = manager.create(CreateJob(**body, destination="out"))
        done = manager.wait(job.id, timeout=60)
        assert done.state.value == "succeeded", done.error
        staged = sorted(
            p.relative_to(tmp_path / "root" / "out").as_posix()
            for p in (tmp_path / "root" / "out").rglob("*")
            if p.is_file()
        )
        prefix = "lc/" if manifest else ""
        zarr = [key.removeprefix("p/") for key in ZARR]
        assert staged == sorted(
            [*(f"{prefix}{name}" for name in ["e", "ok.txt", "q/r/s", *zarr]), "manifest.json"]
        )
        for name in zarr:
            assert (tmp_path / "root" / "out" / f"{prefix}{name}").read_bytes() == ZARR[f"p/{name}"]
        warnings = [line["message"] for line in manager.job_log(job.id) if line["level"] == "warning"]
        (notice,) = [w for w in warnings if "not staged" in w]
        assert notice.startswith(
            ("entry lc: " if manifest else "") + "8 object(s) below the prefix not staged"
        )
        assert notice.endswith(": '.', '..', './y' and 5 more")  # in S3's order
    finally:
        manager.stop()
