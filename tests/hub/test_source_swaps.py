"""A folder of the shared storage swapped for a symlink to a folder outside the shared roots while the hub
service works: the swap is made for real at the exact moment that matters (right after the path was
resolved and found inside the roots, or after the whole check), so the race is deterministic."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from jupyter_staging.errors import PathNotAllowed, StagingError
from jupyter_staging.hub import fileops
from jupyter_staging.hub.areas import UserAreas
from jupyter_staging.hub.fileops import check_source, hardlink, local_copy, open_download


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """``archive/pub/x/data.fits`` (public) and ``outside/data.fits`` (a secret of the same name)."""
    (tmp_path / "archive" / "pub" / "x").mkdir(parents=True)
    (tmp_path / "archive" / "pub" / "x" / "data.fits").write_bytes(b"PUBLIC DATA\n")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "data.fits").write_bytes(b"SECRET OUTSIDE THE SHARED ROOT\n")
    (tmp_path / "homes").mkdir()
    return tmp_path


def swap_for_a_symlink(site: Path) -> None:
    """Replace ``archive/pub/x`` by a symlink to ``outside`` (what a user who may write in ``pub`` can do)."""
    folder = site / "archive" / "pub" / "x"
    folder.rename(site / "archive" / "pub" / "x-moved")
    folder.symlink_to(site / "outside", target_is_directory=True)


def test_a_folder_swapped_right_after_resolution_is_refused_not_followed(site, monkeypatch):
    """``check_source`` resolves the path, finds it inside the roots, and only then looks at the file: a
    folder swapped in between is not followed (the file is reached by descriptor from ``/``)."""
    real_resolve = fileops.resolve_source

    def resolve_then_swap(path, roots):
        resolved = real_resolve(path, roots)
        swap_for_a_symlink(site)
        return resolved

    monkeypatch.setattr(fileops, "resolve_source", resolve_then_swap)
    with pytest.raises(PathNotAllowed) as caught:
        check_source(str(site / "archive" / "pub" / "x" / "data.fits"), [str(site / "archive")])
    assert caught.value.code == "path_not_allowed"


@pytest.mark.parametrize("work", ["direct_download", "local_copy", "hardlink"])
def test_a_folder_swapped_after_the_check_is_source_changed(site, work):
    """A folder swapped between the check and the work: the download, the copy and the hard link read
    nothing from outside the roots (``source_changed``, 409) and leave nothing in the user's area."""
    src = check_source(str(site / "archive" / "pub" / "x" / "data.fits"), [str(site / "archive")])
    assert src.size == len(b"PUBLIC DATA\n")
    swap_for_a_symlink(site)
    with pytest.raises(StagingError) as caught:
        if work == "direct_download":
            open_download(src).close()
        else:
            with UserAreas(str(site / "homes" / "{username}")).open_target("alice", "", src.name) as target:
                (local_copy if work == "local_copy" else hardlink)(src, target)
    assert (caught.value.code, caught.value.status) == ("source_changed", 409)
    area = site / "homes" / "alice"
    assert not area.exists() or os.listdir(area) == []


def test_a_source_whose_folder_is_a_symlink_inside_the_roots_is_still_read(site):
    """Symlinks the archive holds on purpose, and that stay inside the roots, still work: the resolved
    path is what is opened."""
    (site / "archive" / "latest").symlink_to(site / "archive" / "pub" / "x", target_is_directory=True)
    src = check_source(str(site / "archive" / "latest" / "data.fits"), [str(site / "archive")])
    assert src.path == site / "archive" / "pub" / "x" / "data.fits"
    with open_download(src) as file:
        assert file.read() == b"PUBLIC DATA\n"
