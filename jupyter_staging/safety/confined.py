"""Path-shaped file operations below a trusted root, each carried out by directory descriptor.

The engine thinks in paths (``<root>/staging/run/.staging-<id>/expand-0/a.fits``); the user can replace any
folder on such a path by a symbolic link at any moment. :class:`Confined` takes those paths, checks that
they lie below its root, and performs each operation on the last component relative to a descriptor of
its folder, reached from the root with :func:`~jupyter_staging.safety.dirfd.open_below` (no symlink
followed, one component at a time). A swapped folder on the way raises
:class:`~jupyter_staging.errors.PathNotAllowed` (``path_not_allowed``) and touches nothing outside the
root. Removal of a tree uses :func:`shutil.rmtree` with ``dir_fd`` (its symlink-attack-resistant form on
Linux: ``shutil.rmtree.avoids_symlink_attacks``).
"""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath

from jupyter_staging.errors import DestinationExists, PathNotAllowed
from jupyter_staging.safety.dirfd import (
    check_name,
    folder_fd,
    fsync_fd,
    lstat_at,
    mkdir_at,
    rmdir_at,
    unlink_at,
)


class Confined:
    """File operations on paths below ``root`` (a folder the deployer trusts, such as the server's
    ``root_dir``), each done by descriptor.

    Every method raises :class:`PathNotAllowed` when its path is not below ``root`` or when a folder on the
    way is (or became) a symbolic link or a file, and :class:`FileNotFoundError` when a folder on the way is
    missing (methods that create say so)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def relative(self, path: Path) -> PurePosixPath:
        """``path`` relative to the root (POSIX). Raises :class:`PathNotAllowed` when it is not below it
        or is the root itself."""
        try:
            rel = PurePosixPath(path.relative_to(self.root).as_posix())
        except ValueError:
            raise PathNotAllowed(f"{path.name!r} is outside the root") from None
        if rel.name in ("", "."):
            raise PathNotAllowed("the root itself cannot be changed")
        return rel

    @contextmanager
    def folder(self, path: Path, *, create: bool = False, writing: bool | None = None) -> Iterator[int]:
        """A descriptor of folder ``path`` (the root itself allowed), made with its parents when missing
        and ``create``; closed on exit. A missing root is :class:`DestinationUnavailable` to a caller that
        writes (``writing``, default ``create``), :class:`FileNotFoundError` to a look or a removal
        (:func:`~jupyter_staging.safety.dirfd.folder_fd`)."""
        rel = "." if path == self.root else self.relative(path).as_posix()
        with folder_fd(self.root, rel, create=create, writing=writing) as fd:
            yield fd

    @contextmanager
    def parent(
        self, path: Path, *, create: bool = False, writing: bool | None = None
    ) -> Iterator[tuple[int, str]]:
        """``(descriptor of path's folder, path's last component)``; the folder made when ``create``
        (``writing`` as :meth:`folder`)."""
        name = check_name(self.relative(path).name)
        with self.folder(path.parent, create=create, writing=writing) as fd:
            yield fd, name

    def exists(self, path: Path) -> bool:
        """True when something (a symlink included, not followed) is at ``path``; False when it or a
        folder on the way is missing."""
        return self.lstat(path) is not None

    def is_folder(self, path: Path) -> bool:
        """True when ``path`` is a real folder (not a symlink to one)."""
        st = self.lstat(path)
        return st is not None and stat.S_ISDIR(st.st_mode)

    def makedirs(self, path: Path) -> None:
        """Make folder ``path`` and its missing parents (an existing folder is fine)."""
        with self.folder(path, create=True):
            pass

    def lstat(self, path: Path) -> os.stat_result | None:
        """The status of what is at ``path`` (a symlink not followed), or None when it or a folder on the
        way is missing."""
        try:
            with self.parent(path) as (fd, name):
                return lstat_at(fd, name)
        except FileNotFoundError:
            return None

    def unlink(self, path: Path) -> bool:
        """Remove the file or symlink at ``path`` (never followed; a folder is left alone). Returns True
        when something was removed, False when nothing was there (a missing folder on the way too)."""
        try:
            with self.parent(path) as (fd, name):
                return unlink_at(fd, name)
        except FileNotFoundError:
            return False

    def rmdir(self, path: Path) -> bool:
        """Remove the empty folder ``path``; False when it is missing, not empty or not a folder."""
        try:
            with self.parent(path) as (fd, name):
                return rmdir_at(fd, name)
        except FileNotFoundError:
            return False

    def remove_tree(self, path: Path) -> None:
        """Remove folder ``path`` and everything in it, following no symlink (a symlink at ``path`` is
        removed itself); nothing there is fine. Errors on single entries are ignored, as with
        ``shutil.rmtree(ignore_errors=True)``."""
        try:
            with self.parent(path) as (fd, name):
                st = lstat_at(fd, name)
                if st is None:
                    return
                if not stat.S_ISDIR(st.st_mode):
                    unlink_at(fd, name)
                    return
                shutil.rmtree(name, ignore_errors=True, dir_fd=fd)  # type: ignore[call-arg]
        except FileNotFoundError:
            return

    def rename(self, src: Path, dst: Path, *, make_parents: bool = False, sync: bool = True) -> None:
        """Move ``src`` (a file, symlink or folder, never followed) to ``dst``, never replacing anything
        there; ``dst``'s folder is made when ``make_parents``, and fsynced after the move with ``sync`` (a
        caller moving more than one name in a folder fsyncs it once, after the last).

        Raises :class:`DestinationExists` when ``dst`` exists, :class:`FileNotFoundError` when ``src`` is
        missing."""
        with (
            self.parent(src, writing=True) as (src_fd, src_name),
            self.parent(dst, create=make_parents, writing=True) as (dst_fd, name),
        ):
            if lstat_at(dst_fd, name) is not None:
                raise DestinationExists.not_overwritten(name)
            os.rename(src_name, name, src_dir_fd=src_fd, dst_dir_fd=dst_fd)
            if sync:
                fsync_fd(dst_fd)

    def mkdir(self, path: Path, mode: int = 0o777) -> None:
        """Make the single folder ``path`` (its parent must exist); an existing one is fine."""
        with self.parent(path, writing=True) as (fd, name):
            mkdir_at(fd, name, mode)
