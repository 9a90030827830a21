"""Links and reused outputs are made only in folders still at their paths below the destination's root:
a folder moved out of the root while a job runs, and replaced by a symlink, receives nothing."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import pytest

from jupyter_staging.destinations.local import LocalDestination
from jupyter_staging.engine.folders import DestinationWriter
from jupyter_staging.engine.progress import ChunkLedger
from jupyter_staging.errors import PathNotAllowed

PAR1_SHA256 = hashlib.sha256(b"PAR1").hexdigest()


class _Writer(DestinationWriter):
    def __init__(self, root: Path) -> None:
        self.job_id = "job"
        self.dest = LocalDestination(self.job_id, root, "staged")
        self.ledger = ChunkLedger()
        self._lock = threading.RLock()
        self.resume = {"parts_tagged": True}  # a job of this version: its part files are tagged
        self.logged: list[tuple[str, str]] = []

    def _log(self, level: str, message: str) -> None:
        self.logged.append((level, message))


@pytest.fixture
def setting(tmp_path: Path) -> tuple[Path, Path, Path]:
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "shared").mkdir(parents=True)
    outside.mkdir()
    src = root / "shared" / "kplr.fits"
    src.write_bytes(b"SIMPLE  =                    T" + b" " * 50)
    return root, outside, src


@pytest.mark.parametrize("symbolic", [False, True])
def test_a_link_goes_into_a_folder_moved_away_nowhere(setting, symbolic):
    root, outside, src = setting
    writer = _Writer(root)
    staged = root / "staged" / "sub"
    try:
        writer._link_into(src, staged / "first.fits", symbolic=symbolic)  # the folder is kept now
        assert (staged / "first.fits").exists()
        (root / "staged").rename(outside / "staged")
        (root / "staged").symlink_to(outside / "staged")
        with pytest.raises(PathNotAllowed):
            writer._link_into(src, staged / "second.fits", symbolic=symbolic)
        assert sorted(p.name for p in (outside / "staged" / "sub").iterdir()) == ["first.fits"]
    finally:
        writer.close_folders()


def test_a_reused_output_is_not_published_into_a_folder_moved_away(setting):
    root, outside, src = setting
    writer = _Writer(root)
    staged = root / "staged"
    try:
        writer._link_into(src, staged / "done.fits", symbolic=False)
        (staged / "work").mkdir()
        (staged / "work" / "out.parquet").write_bytes(b"PAR1")
        writer._publish_tagged(staged / "work" / "out.parquet", staged / "out.parquet", PAR1_SHA256)
        assert (staged / "out.parquet").read_bytes() == b"PAR1"
        (staged / "work" / "next.parquet").write_bytes(b"PAR1")
        (root / "staged").rename(outside / "staged")
        (root / "staged").symlink_to(outside / "staged")
        with pytest.raises(PathNotAllowed):
            writer._publish_tagged(staged / "work" / "next.parquet", staged / "next.parquet", PAR1_SHA256)
        assert not (outside / "staged" / "next.parquet").exists()
    finally:
        writer.close_folders()


def test_a_part_file_is_not_made_in_a_folder_moved_away(setting):
    """A large file's part (named ``.part``) is created in its folder only when the kept folder is still
    at its path: nothing is created, written or set aside in a folder moved out of the root."""
    root, outside, src = setting
    writer = _Writer(root)
    staged = root / "staged"
    try:
        writer._link_into(src, staged / "first.fits", symbolic=False)  # the folder is kept now
        (root / "staged").rename(outside / "staged")
        (root / "staged").symlink_to(outside / "staged")
        with pytest.raises(PathNotAllowed):
            writer.part_file(staged / "big.fits")
        assert sorted(p.name for p in (outside / "staged").iterdir()) == ["first.fits"]
    finally:
        writer.close_folders()


@pytest.mark.parametrize("symbolic", [False, True])
def test_a_link_is_removed_only_while_its_name_is_still_that_link(setting, symbolic):
    """``_remove_output`` removes the name this run made, and leaves a file that took the name since."""
    root, _outside, src = setting
    writer = _Writer(root)
    staged = root / "staged"
    try:
        made = writer._link_into(src, staged / "a.fits", symbolic=symbolic)
        made_lstat = (staged / "a.fits").lstat()

        def ours(st, target):
            if symbolic:
                return target == str(src)
            return (st.st_dev, st.st_ino) == (made.st_dev, made.st_ino)

        (staged / "mine.fits").write_bytes(b"the user's own")
        (staged / "mine.fits").replace(staged / "a.fits")  # took the name while the link was verified
        assert writer._remove_output(staged / "a.fits", ours) is False
        assert (staged / "a.fits").read_bytes() == b"the user's own"
        (staged / "a.fits").unlink()
        writer._link_into(src, staged / "a.fits", symbolic=symbolic)
        if not symbolic:
            made = (staged / "a.fits").lstat()
        assert (staged / "a.fits").lstat().st_mode == made_lstat.st_mode
        assert writer._remove_output(staged / "a.fits", ours) is True
        assert not (staged / "a.fits").exists() and not (staged / "a.fits").is_symlink()
        assert writer._remove_output(staged / "a.fits", ours) is True  # gone already: no error
        assert src.exists()
    finally:
        writer.close_folders()


def test_a_published_downloaded_file_is_hashed_through_the_file_published(setting):
    """A conversion's downloaded file is hashed through the descriptor that is then linked under its final
    name: the digest returned and its tag describe the bytes published, whatever was at the name before."""
    root, outside, src = setting
    writer = _Writer(root)
    staged = root / "staged"
    try:
        (staged / "work").mkdir(parents=True)
        (staged / "work" / "image.fits").write_bytes(b"the bytes at the name now")
        size, sha = writer._publish_tagged(staged / "work" / "image.fits", staged / "image.fits")
        assert (size, sha) == (25, hashlib.sha256(b"the bytes at the name now").hexdigest())
        assert (staged / "image.fits").read_bytes() == b"the bytes at the name now"
        assert not (staged / "work" / "image.fits").exists()
    finally:
        writer.close_folders()


def test_a_fifo_at_a_downloaded_files_name_is_refused_not_waited_on(setting):
    """A FIFO put at the name of a file to publish is refused at once (opened without blocking), never
    published."""
    root, outside, src = setting
    writer = _Writer(root)
    staged = root / "staged"
    try:
        (staged / "work").mkdir(parents=True)
        os.mkfifo(staged / "work" / "image.fits")
        with pytest.raises(PathNotAllowed):
            writer._publish_tagged(staged / "work" / "image.fits", staged / "image.fits")
        assert not os.path.lexists(staged / "image.fits")
    finally:
        writer.close_folders()
