"""FolderCache: each folder below the root is walked to once per run, and a kept descriptor never lets a
symlink planted later redirect a write."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from jupyter_staging.errors import PathNotAllowed
from jupyter_staging.safety.dirfd import same_inode
from jupyter_staging.safety.foldercache import FolderCache
from jupyter_staging.safety.partfile import PartFile


@pytest.fixture
def layout(tmp_path: Path) -> tuple[Path, Path]:
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    return root, outside


def test_a_folder_is_walked_to_once_then_duplicated(layout):
    root, _ = layout
    cache = FolderCache(root)
    try:
        first = cache.open("a/b", create=True)
        (root / "a").rename(root / "a-moved")  # a walk from the root would now fail
        second = cache.open("a/b")
        assert first != second and same_inode(first, second)
        assert os.fstat(second).st_ino == (root / "a-moved" / "b").stat().st_ino
        os.close(first)
        os.close(second)
        with pytest.raises(FileNotFoundError):
            cache.walk("a/b")  # the check by path walks afresh
    finally:
        cache.close()
    with pytest.raises(FileNotFoundError):  # closed: walks again, and the folder is gone from its path
        cache.open("a/b")
    cache.close()


def test_a_symlinked_folder_is_refused_on_the_first_walk(layout):
    root, outside = layout
    (root / "link").symlink_to(outside)
    cache = FolderCache(root)
    try:
        with pytest.raises(PathNotAllowed):
            cache.open("link/sub", create=True)
        assert list(outside.iterdir()) == []
    finally:
        cache.close()


def test_a_folder_replaced_by_a_symlink_after_it_was_kept_publishes_nothing(layout):
    root, outside = layout
    cache = FolderCache(root)
    try:
        PartFile(root / "dest" / "one.bin", folders=cache).commit(0)  # the folder is now kept
        out = PartFile(root / "dest" / "two.bin", folders=cache)
        out.write(b"bytes")
        (root / "dest").rename(root / "moved")
        (root / "dest").symlink_to(outside)
        with pytest.raises(PathNotAllowed) as info:
            out.commit(5)
        assert info.value.code == "path_not_allowed"
        assert list(outside.iterdir()) == []
        assert sorted(p.name for p in (root / "moved").iterdir()) == ["one.bin"]
        # A new part file is not even made: neither through the symlink nor in the kept folder, moved away.
        with pytest.raises(PathNotAllowed):
            PartFile(root / "dest" / "three.bin", folders=cache)
        assert list(outside.iterdir()) == []
        assert sorted(p.name for p in (root / "moved").iterdir()) == ["one.bin"]
    finally:
        cache.close()


def test_more_folders_than_the_limit_are_walked_each_time(layout):
    root, _ = layout
    cache = FolderCache(root, limit=2)
    try:
        fds = [cache.open(f"f{i}", create=True) for i in range(4)]
        for fd in fds:
            os.close(fd)
        (root / "f3").rename(root / "f3-moved")  # not kept: the next use walks and finds it gone
        with pytest.raises(FileNotFoundError):
            cache.open("f3")
        (root / "f0").rename(root / "f0-moved")  # kept: still usable by descriptor
        fd = cache.open("f0")
        os.close(fd)
    finally:
        cache.close()


def test_a_new_folder_below_a_moved_kept_parent_is_walked_to_and_refused(layout):
    """A folder not kept yet is walked to from the root, never opened in a kept parent that may have been
    moved: a parent replaced by a symlink (to where it was moved) is refused, and nothing is made there."""
    root, outside = layout
    cache = FolderCache(root)
    try:
        os.close(cache.open("a/sub1", create=True))  # "a" is kept on the way
        (root / "a").rename(outside / "a")
        (root / "a").symlink_to(outside / "a")
        with pytest.raises(PathNotAllowed):
            cache.open("a/sub2", create=True)
        assert sorted(p.name for p in (outside / "a").iterdir()) == ["sub1"]
    finally:
        cache.close()


def test_a_deep_folder_is_walked_to_without_recursion(layout):
    root, _ = layout
    cache = FolderCache(root)
    depth = 1200  # deeper than Python's recursion limit
    try:
        deep = "/".join(["d"] * depth)
        fd = cache.open(deep, create=True)
        try:
            assert cache.in_place(deep, fd)
        finally:
            os.close(fd)
    finally:
        cache.close()
        # Removed here, deepest first: shutil.rmtree (pytest's clean-up) recurses once per level.
        for level in range(depth, 0, -1):
            (root / "/".join(["d"] * level)).rmdir()


def test_placed_yields_a_kept_folder_that_is_still_at_its_path(layout):
    root, _ = layout
    cache = FolderCache(root)
    try:
        with cache.placed("a/b", create=True) as fd:
            os.link(__file__, "linked", dst_dir_fd=fd)
        assert (root / "a" / "b" / "linked").samefile(__file__)
        with cache.placed("a/b") as again:  # the kept descriptor, lent: still open after the block
            assert again == fd
        os.fstat(fd)
    finally:
        cache.close()


@pytest.mark.parametrize("moved", ["a/b", "a"])
def test_placed_refuses_a_kept_folder_moved_out_of_the_root_and_replaced_by_a_symlink(layout, moved):
    """A kept descriptor follows its folder wherever it is moved: a link made through it would land
    outside the root. ``placed`` finds the path leads elsewhere (a symlink) and makes nothing."""
    root, outside = layout
    cache = FolderCache(root)
    try:
        with cache.placed("a/b", create=True):
            pass
        (root / moved).rename(outside / "moved")
        (root / moved).symlink_to(outside / "moved")
        with pytest.raises(PathNotAllowed, match="moved or replaced"):
            with cache.placed("a/b") as fd:
                os.link(__file__, "linked", dst_dir_fd=fd)
        assert not list(outside.rglob("linked"))
    finally:
        cache.close()
