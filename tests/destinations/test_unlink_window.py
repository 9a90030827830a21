"""Removing a job's output file that its chunk record vouches for (``remove_chunk`` with the file as it was
published: an ack under ``delete_on_ack``, a cleanup) checks the file at that name, then removes it. A file
the user renamed onto that name in between (``mv mine.fits lc.fits`` while the job's file was being
cleaned up) used to be removed by name. Now the name is first moved to a private one in the same folder, by
descriptor, and only the very file that was checked is removed; any other is given its name back.

The user's rename is made at the exact point between the check and the removal (the check's ``lstat`` is
wrapped): a race a test cannot win on cue. Real files on the test's own file system.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from jupyter_staging.destinations import local
from jupyter_staging.destinations.base import PublishedFile
from jupyter_staging.destinations.local import LocalDestination

JOB = "0123456789abcdef0123456789abcdef"


def published_file(path: Path) -> PublishedFile:
    st = path.stat()
    return PublishedFile(st.st_size, st.st_mtime_ns)


@pytest.fixture
def staged(tmp_path: Path) -> Path:
    folder = tmp_path / "staged"
    folder.mkdir()
    return folder


def test_a_file_renamed_onto_the_name_after_its_check_stays(tmp_path: Path, staged: Path, monkeypatch):
    ours = staged / "lc.fits"
    ours.write_bytes(b"the job's light curve")
    published = published_file(ours)
    theirs = staged / "mine.fits"
    theirs.write_bytes(b"the user's own file, not the job's")
    real_lstat = local.lstat_at
    renamed: list[str] = []

    def then_renamed_onto(dir_fd: int, name: str):
        checked = real_lstat(dir_fd, name)
        if name == "lc.fits" and not renamed:  # the check is made: the user's mv lands now
            os.rename(theirs, ours)
            renamed.append(name)
        return checked

    monkeypatch.setattr(local, "lstat_at", then_renamed_onto)
    removed = LocalDestination(JOB, tmp_path, "staged").remove_chunk("lc.fits", published)
    assert renamed == ["lc.fits"]
    assert removed is False
    assert ours.read_bytes() == b"the user's own file, not the job's"
    assert sorted(p.name for p in staged.iterdir()) == ["lc.fits"]  # nothing left aside either


def test_the_checked_file_is_removed_and_nothing_is_left_aside(tmp_path: Path, staged: Path):
    ours = staged / "lc.fits"
    ours.write_bytes(b"the job's light curve")
    kept = staged / "notes.txt"
    kept.write_text("the user's")
    assert LocalDestination(JOB, tmp_path, "staged").remove_chunk("lc.fits", published_file(ours)) is True
    assert sorted(p.name for p in staged.iterdir()) == ["notes.txt"]


def test_a_file_changed_since_it_was_published_stays(tmp_path: Path, staged: Path):
    ours = staged / "lc.fits"
    ours.write_bytes(b"the job's light curve")
    published = published_file(ours)
    ours.write_bytes(b"edited by the user, a longer file")
    assert LocalDestination(JOB, tmp_path, "staged").remove_chunk("lc.fits", published) is False
    assert ours.read_bytes() == b"edited by the user, a longer file"
