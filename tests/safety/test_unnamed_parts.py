"""Unnamed part files (``O_TMPFILE``) for small files, and the cheaper check that a kept folder is still in
place before publishing (issue 12).

A small file's part has no name until it is complete, verified and linked under its final name: nothing to
tag, set aside or remove, and nothing left behind by a failure or a crash. :meth:`FolderCache.in_place`
checks each name on the way with ``fstatat`` in its kept parent instead of walking from the root, and
must refuse everything a walk refuses: a folder moved, replaced, or reached through a symlink.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from jupyter_staging.errors import DestinationExists, PathNotAllowed, VerificationFailed
from jupyter_staging.safety import publishing, unnamed
from jupyter_staging.safety.dirfd import folder_below
from jupyter_staging.safety.foldercache import FolderCache
from jupyter_staging.safety.partfile import PartFile
from jupyter_staging.safety.unnamed import create_unnamed


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def unnamed_part(cache: FolderCache, final: Path) -> PartFile:
    """A part file of ``final`` made the way the engine makes a small file's."""
    fd = cache.open(folder_below(cache.root, final), create=True)
    blank = create_unnamed(fd)
    assert blank is not None, "this file system makes O_TMPFILE files (ext4, tmpfs, xfs, btrfs)"
    return PartFile(final, folders=cache, dir_fd=fd, unnamed_fd=blank)


@pytest.fixture
def cache(tmp_path: Path):
    folders = FolderCache(tmp_path)
    yield folders
    folders.close()


def test_an_unnamed_part_has_no_name_until_it_is_published(tmp_path: Path, cache: FolderCache):
    final = tmp_path / "out" / "lc.fits"
    before = open_fds()
    out = unnamed_part(cache, final)
    out.write(b"x" * 70_000)
    assert out.unnamed and os.listdir(final.parent) == []  # no .part, nothing at all
    out.sync()
    size, sha = out.commit(70_000, sync_folder=False)
    assert (size, sha) == (70_000, hashlib.sha256(b"x" * 70_000).hexdigest())
    assert os.listdir(final.parent) == ["lc.fits"] and final.read_bytes() == b"x" * 70_000
    assert final.stat().st_nlink == 1
    assert open_fds() == before + 2  # only the cache's kept folder and root: the part's own are closed


@pytest.mark.parametrize("how", ["discard", "close", "size mismatch", "final taken"])
def test_an_unnamed_part_that_is_not_published_leaves_nothing(tmp_path: Path, cache: FolderCache, how: str):
    final = tmp_path / "out" / "lc.fits"
    cache.open("out", create=True)  # kept: the descriptor count below is the part's own
    before = open_fds()
    out = unnamed_part(cache, final)
    out.write(b"y" * 1000)
    if how == "discard":
        out.discard()
    elif how == "close":  # an interrupted job: an unnamed part cannot be resumed, so nothing is kept
        out.close()
    elif how == "size mismatch":
        with pytest.raises(VerificationFailed):
            out.commit(999)
    else:
        final.write_bytes(b"theirs")
        with pytest.raises(DestinationExists):
            out.commit(1000)
    expected = ["lc.fits"] if how == "final taken" else []
    assert sorted(os.listdir(final.parent)) == expected
    if how == "final taken":
        assert final.read_bytes() == b"theirs"  # never replaced
    assert open_fds() == before


def test_a_crash_before_publishing_leaves_no_file(tmp_path: Path):
    """A process killed with its unnamed part written and fsynced: the folder holds nothing afterwards."""
    script = textwrap.dedent(
        f"""
        import os, signal
        from pathlib import Path
        from jupyter_staging.safety.foldercache import FolderCache
        from jupyter_staging.safety.unnamed import create_unnamed
        from jupyter_staging.safety.partfile import PartFile
        cache = FolderCache(Path({str(tmp_path)!r}))
        fd = cache.open("out", create=True)
        out = PartFile(Path({str(tmp_path / "out" / "lc.fits")!r}), folders=cache, dir_fd=fd,
                       unnamed_fd=create_unnamed(fd))
        out.write(b"z" * 100_000)
        out.sync()
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], check=False)
    assert done.returncode == -9
    assert os.listdir(tmp_path / "out") == []


def test_md5_of_an_unnamed_part_is_read_back_by_descriptor(tmp_path: Path, cache: FolderCache):
    final = tmp_path / "out" / "a.bin"
    out = unnamed_part(cache, final)
    out.write(b"abc")
    out.commit(3, checksums={"md5": hashlib.md5(b"abc").hexdigest()})  # noqa: S324 - the checksum stated
    assert final.read_bytes() == b"abc"


def test_in_place_accepts_an_untouched_folder_and_refuses_a_moved_one(tmp_path: Path, cache: FolderCache):
    fd = cache.open("a/b/c", create=True)
    try:
        assert cache.in_place("a/b/c", fd)
        (tmp_path / "a" / "b").rename(tmp_path / "a" / "b2")
        assert not cache.in_place("a/b/c", fd)  # the folder itself is intact, but not at its path
        (tmp_path / "a" / "b").mkdir()
        (tmp_path / "a" / "b" / "c").mkdir()
        assert not cache.in_place("a/b/c", fd)  # a new folder of the same name is another folder
    finally:
        os.close(fd)


@pytest.mark.parametrize("where", ["the folder", "a parent"])
def test_in_place_refuses_a_symlink_even_to_the_very_folder(tmp_path: Path, cache: FolderCache, where: str):
    """A walk never follows a symlink, so neither does the check: a symlink that leads to the same folder
    (moved away, then linked back) is refused like one leading elsewhere."""
    fd = cache.open("a/b", create=True)
    try:
        moved = tmp_path / "elsewhere"
        if where == "the folder":
            (tmp_path / "a" / "b").rename(moved)
            (tmp_path / "a" / "b").symlink_to(moved)
        else:
            (tmp_path / "a").rename(moved)
            (tmp_path / "a").symlink_to(moved)
        assert os.path.samefile(tmp_path / "a" / "b", f"/proc/self/fd/{fd}")  # same folder through the link
        assert not cache.in_place("a/b", fd)
    finally:
        os.close(fd)


def test_in_place_walks_when_a_parent_is_not_kept(tmp_path: Path):
    cache = FolderCache(tmp_path, limit=1)  # only "a" is kept: "a/b" is checked by a walk
    try:
        fd = cache.open("a/b", create=True)
        try:
            assert cache.in_place("a/b", fd)
            (tmp_path / "a").rename(tmp_path / "a2")
            (tmp_path / "a").mkdir()
            assert not cache.in_place("a/b", fd)  # missing at its path
        finally:
            os.close(fd)
    finally:
        cache.close()


def test_publishing_into_a_folder_replaced_by_a_symlink_is_refused(tmp_path: Path, cache: FolderCache):
    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    outside.mkdir()
    out = unnamed_part(cache, tmp_path / "dest" / "sub" / "two.bin")
    out.write(b"bytes")
    (tmp_path / "dest").rename(tmp_path / "moved")
    (tmp_path / "dest").symlink_to(tmp_path / "moved")  # the same folder, reached through a link
    with pytest.raises(PathNotAllowed) as info:
        out.commit(5)
    assert info.value.code == "path_not_allowed"
    assert os.listdir(tmp_path / "moved" / "sub") == []  # the unnamed part is gone with it
    assert list(outside.iterdir()) == []


def test_a_lent_folder_descriptor_outlives_its_part_files(tmp_path: Path):
    """The engine lends the kept descriptor to each small file's part (no ``dup``/``close`` per file); the
    part never closes it, and a folder beyond the cache's limit is given as a descriptor of its own."""
    cache = FolderCache(tmp_path, limit=1)
    try:
        fd, lent = cache.lend("out", create=True)
        assert lent and fd == cache.lend("out")[0]
        for name in ("a.bin", "b.bin"):
            out = PartFile(
                tmp_path / "out" / name,
                folders=cache,
                dir_fd=fd,
                dir_fd_lent=True,
                unnamed_fd=create_unnamed(fd),
            )
            out.write(b"1")
            out.commit(1)
        os.fstat(fd)  # still open
        assert sorted(os.listdir(tmp_path / "out")) == ["a.bin", "b.bin"]
        other, lent = cache.lend("other", create=True)  # the limit is reached: not kept, not lent
        assert not lent and other != fd
        os.close(other)
    finally:
        cache.close()


@pytest.mark.parametrize("taken", [False, True])
def test_where_linking_through_procfs_is_refused_the_bytes_are_copied_to_a_named_part(
    tmp_path: Path, cache: FolderCache, monkeypatch, taken: bool
):
    """Some sandboxes refuse ``linkat`` through ``/proc/self/fd`` (a fault this machine cannot produce: the
    path is pointed at a missing folder). The file is then copied to a part of its own name and published
    the usual way, and later files are no longer made unnamed."""
    unnamed._procfs()  # looked up once, before /proc is made to refuse (as in a process that ran before)
    monkeypatch.setattr(unnamed, "PROC_FD", str(tmp_path / "no-proc"))
    monkeypatch.setattr(publishing, "PROC_FD", str(tmp_path / "no-proc"))  # where link_open_file links
    monkeypatch.setattr(unnamed, "_unnamed_refused", False)
    final = tmp_path / "out" / "lc.fits"
    out = unnamed_part(cache, final)
    out.write(b"q" * 3000)
    if taken:
        final.write_bytes(b"theirs")
        with pytest.raises(DestinationExists):
            out.commit(3000)
        assert final.read_bytes() == b"theirs" and os.listdir(final.parent) == ["lc.fits"]
    else:
        assert out.commit(3000) == (3000, hashlib.sha256(b"q" * 3000).hexdigest())
        assert final.read_bytes() == b"q" * 3000 and os.listdir(final.parent) == ["lc.fits"]
    fd = cache.open("out")
    try:
        assert create_unnamed(fd) is None  # no more unnamed files in this process
    finally:
        os.close(fd)


def test_a_copy_whose_part_name_is_taken_over_is_neither_published_nor_removed(
    tmp_path: Path, cache: FolderCache, monkeypatch
):
    """Where linking through ``/proc/self/fd`` is refused, the copy made instead is published only while
    its ``.part`` name still names it: a file the user put at that name meanwhile (their folder is theirs
    to change; the instant is injected, a race this test cannot win for real) is neither published under
    the final name nor removed."""
    unnamed._procfs()  # looked up once, before /proc is made to refuse (as in a process that ran before)
    monkeypatch.setattr(unnamed, "PROC_FD", str(tmp_path / "no-proc"))
    monkeypatch.setattr(publishing, "PROC_FD", str(tmp_path / "no-proc"))
    monkeypatch.setattr(unnamed, "_unnamed_refused", False)
    final = tmp_path / "out" / "lc.fits"
    fsync = os.fsync

    def taken_over_after(fd: int) -> None:  # the copy is fsynced, then published
        fsync(fd)
        named = Path(os.readlink(f"/proc/self/fd/{fd}"))
        if named.name.startswith("lc.fits.") and named.name.endswith(".part"):
            (final.parent / "theirs").write_bytes(b"theirs")
            os.rename(final.parent / "theirs", named)

    monkeypatch.setattr(os, "fsync", taken_over_after)
    out = unnamed_part(cache, final)
    out.write(b"q" * 3000)
    with pytest.raises(PathNotAllowed, match="replaced"):
        out.commit(3000)
    (name,) = os.listdir(final.parent)
    assert name.startswith("lc.fits.") and name.endswith(".part")
    assert (final.parent / name).read_bytes() == b"theirs"
