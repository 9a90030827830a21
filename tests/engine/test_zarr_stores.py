"""A Zarr v2 store staged from shared storage (issue: its ``.zgroup`` / ``.zarray`` / ``.zattrs`` files were
skipped as hidden, so the staged store could not be opened): the metadata files are staged as the store's
chunks are, by copy, hard link and symlink, recorded in the job's manifest, and a re-run finds the store up to
date. Every other hidden entry (``.git/``, ``.bashrc``) is still left out.

Real parts: a real :class:`StagingManager` with its SQLite job database on a folder of the test's own.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from jupyter_staging.engine.models import CreateJob
from tests.helpers.managers import manager_for

#: A Zarr v2 store as zarr-python 2 writes one: a group with one 2 x 2-chunked float array and attributes.
FLUX = np.arange(16, dtype="<f8").reshape(4, 4)
ARRAY_META = {
    "zarr_format": 2,
    "shape": [4, 4],
    "chunks": [2, 2],
    "dtype": "<f8",
    "compressor": None,
    "fill_value": "NaN",
    "filters": None,
    "order": "C",
}


def write_store(store: Path) -> dict[str, bytes]:
    """Write the store's files below ``store``; returns ``{relative name: bytes}`` of what must be staged."""
    files = {
        ".zgroup": json.dumps({"zarr_format": 2}).encode(),
        ".zattrs": json.dumps({"TELESCOP": "TESS", "SECTOR": 1}).encode(),
        "flux/.zarray": json.dumps(ARRAY_META).encode(),
        "flux/.zattrs": json.dumps({"units": "e-/s"}).encode(),
    }
    for i in range(2):
        for j in range(2):
            block = FLUX[2 * i : 2 * i + 2, 2 * j : 2 * j + 2]
            files[f"flux/{i}.{j}"] = np.ascontiguousarray(block).tobytes()
    for rel, data in files.items():
        (store / rel).parent.mkdir(parents=True, exist_ok=True)
        (store / rel).write_bytes(data)
    (store / ".git").mkdir()
    (store / ".git" / "config").write_text("[core]\n\tfsmonitor = touch /tmp/owned\n")
    (store / ".bashrc").write_text("echo owned\n")
    return files


def read_flux(store: Path) -> np.ndarray:
    """The ``flux`` array read back from the staged store's own metadata, as a Zarr v2 reader does."""
    meta = json.loads((store / "flux" / ".zarray").read_text())
    out = np.empty(meta["shape"], dtype=meta["dtype"])
    ci, cj = meta["chunks"]
    for i in range(meta["shape"][0] // ci):
        for j in range(meta["shape"][1] // cj):
            chunk = np.frombuffer((store / "flux" / f"{i}.{j}").read_bytes(), dtype=meta["dtype"])
            out[i * ci : (i + 1) * ci, j * cj : (j + 1) * cj] = chunk.reshape(ci, cj)
    return out


@pytest.mark.parametrize("method", ["copy", "hardlink", "symlink"])
def test_a_zarr_store_is_staged_with_its_metadata_files(tmp_path: Path, method: str):
    shared = tmp_path / "shared" / "tess-cube.zarr"
    files = write_store(shared)
    (tmp_path / "root").mkdir()
    mgr = manager_for(tmp_path, source_roots=[str(tmp_path / "shared")])
    try:
        job, _ = mgr.create(CreateJob(source=str(shared), destination="cube.zarr", method=method))
        done = mgr.wait(job.id, timeout=60)
        assert done.state.value == "succeeded", done.error
        staged = tmp_path / "root" / "cube.zarr"
        found = {
            p.relative_to(staged).as_posix(): p.read_bytes()
            for p in staged.rglob("*")
            if p.is_file() and p.name != "manifest.json"
        }
        assert found == files  # no .git/, no .bashrc
        assert json.loads((staged / ".zattrs").read_text())["TELESCOP"] == "TESS"
        np.testing.assert_array_equal(read_flux(staged), FLUX)
        listed = {entry["path"] for entry in json.loads((staged / "manifest.json").read_text())["objects"]}
        assert {name.rsplit("/", 1)[-1] for name in listed} >= {".zgroup", ".zattrs", ".zarray", "0.0"}
        again, _ = mgr.create(CreateJob(source=str(shared), destination="cube.zarr", method=method))
        assert again.up_to_date, again
    finally:
        mgr.stop()
