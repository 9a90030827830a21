"""Output names a job creates below its destination (:func:`check_output_name`): relative, no ``..``, no
empty or hidden parts, except a Zarr v2 store's metadata files as the last part (``DATA_DOT_NAMES``)."""

from __future__ import annotations

import pytest

from jupyter_staging.errors import PathNotAllowed
from jupyter_staging.safety.paths import DATA_DOT_NAMES, check_output_name


@pytest.mark.parametrize(
    "name", ["kplr.fits", "a/b/c.fits", "cube.zarr/.zarray", ".zgroup", "c.zarr/flux/.zattrs", ".zmetadata"]
)
def test_plain_names_and_zarr_metadata_files_are_allowed(name: str):
    assert check_output_name(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "",
        "/etc/passwd",
        "../x",
        "a/../b",
        ".bashrc",
        ".ipython/profile_default/startup/x.py",
        ".git/config",
        "a/.zattrs/x",  # a folder named like a metadata file
        ".zarray.bak",
        "nul\x00.fits",
    ],
)
def test_hidden_parts_and_escapes_are_refused(name: str):
    with pytest.raises(PathNotAllowed):
        check_output_name(name)


def test_the_data_dot_names_are_zarr_v2_metadata_only():
    assert {".zarray", ".zattrs", ".zgroup", ".zmetadata"} == DATA_DOT_NAMES
