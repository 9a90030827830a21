"""A scratch folder outside the user's root (``StagingApp.scratch_dir``) must be one no other account
controls, nor any folder or link on its way, and a job's folder in it must be this account's.

Another account is uid 65534 (``nobody``): these tests give it folders and links with ``chown``, which needs
root, as CI and this project's machines run. Real folders on the test's file system; nothing is mocked.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from jupyter_staging.destinations.base import make_private_dir
from jupyter_staging.errors import DestinationUnavailable, PathNotAllowed
from jupyter_staging.safety.privatedir import check_private_folder, path_exposure

OTHER = 65534

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="giving a folder to another account needs root")


def test_a_missing_folder_is_made_private_and_passes(tmp_path: Path):
    folder = tmp_path / "node" / "scratch"
    check_private_folder(folder)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert path_exposure(folder) is None
    make_private_dir(folder / "job-1", folder, private_root=True)
    assert stat.S_IMODE((folder / "job-1").stat().st_mode) == 0o700


def test_a_sticky_folder_writable_by_all_passes_and_one_without_the_sticky_bit_does_not(tmp_path: Path):
    shared = tmp_path / "tmp"
    shared.mkdir()
    shared.chmod(0o1777)
    check_private_folder(shared)  # as /tmp itself
    check_private_folder(shared / "mine")

    shared.chmod(0o777)  # a group area: anyone may rename "mine" and put their own folder there
    with pytest.raises(PathNotAllowed) as info:
        check_private_folder(shared / "mine")
    assert f"{shared} can be written by other accounts (mode 777, no sticky bit)" in info.value.message
    assert "StagingApp.scratch_dir" in info.value.message


@needs_root
def test_a_folder_or_link_of_another_account_on_the_way_is_refused(tmp_path: Path):
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o755)
    os.chown(theirs, OTHER, OTHER)
    with pytest.raises(PathNotAllowed) as info:
        check_private_folder(theirs)
    assert f"{theirs} belongs to another account (uid {OTHER})" in info.value.message

    sticky = tmp_path / "sticky"
    sticky.mkdir()
    sticky.chmod(0o1777)
    mine = tmp_path / "mine"
    mine.mkdir(mode=0o700)
    link = sticky / "jupyter-scratch"
    link.symlink_to(mine)  # leads to a folder of this account, but the other account may point it elsewhere
    os.lchown(link, OTHER, OTHER)
    with pytest.raises(PathNotAllowed) as info:
        check_private_folder(link)
    assert f"{link} is a link of another account (uid {OTHER})" in info.value.message
    os.lchown(link, os.geteuid(), os.getegid())
    check_private_folder(link)  # this account's own link: fine


@needs_root
def test_a_jobs_folder_made_first_by_another_account_is_refused(tmp_path: Path):
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    scratch.chmod(0o1777)
    planted = scratch / "job-2"
    planted.mkdir()
    planted.chmod(0o777)
    os.chown(planted, OTHER, OTHER)
    with pytest.raises(PathNotAllowed) as info:
        make_private_dir(planted, scratch, private_root=True)
    assert f"made by another account (uid {OTHER})" in info.value.message
    assert stat.S_IMODE(planted.stat().st_mode) == 0o777 and planted.stat().st_uid == OTHER  # untouched


def test_a_scratch_folder_that_cannot_be_made_is_a_clear_error(tmp_path: Path):
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(DestinationUnavailable) as info:
        check_private_folder(tmp_path / "a-file" / "scratch")
    assert "cannot be made or looked at" in info.value.message
    assert info.value.code == "destination_unavailable"
