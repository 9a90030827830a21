"""Folder descriptors kept for a job run: each folder below the root walked to once, checked in place.

A job that writes 20,000 files into one folder would otherwise walk from the root (one ``open`` per path
component, no symlink followed: :func:`~jupyter_staging.safety.dirfd.open_below`) four times per file.
:class:`FolderCache` walks once and keeps the descriptor. A kept descriptor follows its folder wherever it
is moved, so anything that gives a file a name in it first checks the folder is still at its path
(:meth:`FolderCache.in_place`, :meth:`FolderCache.placed`): a folder moved out of the root and replaced by
a symlink receives nothing (``DESIGN.md``, "Security rules").
"""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import NamedTuple

from jupyter_staging.errors import PathNotAllowed
from jupyter_staging.safety.descriptors import FOLDERS_PER_MILLE, descriptor_share
from jupyter_staging.safety.dirfd import (
    closing_fd,
    components,
    fd_identity,
    identity,
    open_below,
    open_root,
    same_inode,
)


class _Chain(NamedTuple):
    """A folder below the root as :meth:`FolderCache.in_place` walks it: ``key`` (its names joined by
    ``/``), ``names`` (one per level) and ``parents`` (the keys of the folders above it, root excluded)."""

    key: str
    names: tuple[str, ...]
    parents: tuple[str, ...]


class FolderCache:
    """Descriptors of folders below one trusted ``root``, each reached once with :func:`open_below` (no
    symlink followed) and kept until :meth:`close` (a job run keeps one): later uses cost one ``dup``
    instead of a walk from the root. A folder of many files is thus opened once, not four times per file.

    A kept descriptor designates the folder it was opened on, wherever that folder is moved later; a
    symlink put in its place afterwards is never followed. Code that must know the folder is still at its
    path asks :meth:`in_place` (as publishing does), or re-walks with :meth:`walk` and compares inodes
    (:func:`same_inode`). At most ``limit`` folders are kept; beyond that each use walks from the root.
    Thread-safe."""

    def __init__(self, root: Path, *, limit: int | None = None) -> None:
        self.root = root
        #: At most 256, fewer under a low open-file limit (:func:`descriptor_share`).
        self._limit = limit if limit is not None else descriptor_share(FOLDERS_PER_MILLE, low=8, high=256)
        self._lock = threading.Lock()
        self._root_fd: int | None = None
        self._kept: dict[str, int] = {}
        #: (device, inode) of each kept folder, as opened.
        self._ids: dict[str, tuple[int, int]] = {}
        #: :meth:`_chain` of each folder asked for (its names parsed once, not once per file).
        self._chains: dict[str, _Chain] = {}

    def _root(self) -> int:
        """The kept descriptor of the root, opened on first use. Raises :class:`DestinationUnavailable`
        when the root is missing or may not be entered (moved, deleted or unmounted under the server),
        :class:`PathNotAllowed` when it is not a folder."""
        with self._lock:
            if self._root_fd is None:
                self._root_fd = open_root(self.root)
            return self._root_fd

    def open(self, rel: str | PurePosixPath, *, create: bool = False, placed: bool = False) -> int:
        """A new descriptor (the caller closes it) of folder ``root / rel``: a ``dup`` of the kept one, else
        walked from the root (:func:`open_below`; the folders on the way are kept too) and kept. With
        ``placed``, a kept one is first checked to be at its path still (:meth:`in_place`; a folder walked
        to is). Raises like :func:`open_folder`, and :class:`PathNotAllowed` for a kept folder moved or
        replaced with ``placed``."""
        key = self._chain(rel).key
        with self._lock:
            kept = self._kept.get(key)
            fd = os.dup(kept) if kept is not None else None
        if fd is not None:
            if placed:
                try:
                    self.check_placed(key, fd)
                except BaseException:
                    os.close(fd)
                    raise
            return fd
        # Walked from the root (never through a kept descriptor, which may have been moved); the folders
        # on the way are kept too, so that in_place can check a path by its kept parents.
        fd = open_below(self._root(), key, create=create, on_the_way=self._keep)
        self._keep(key, fd)
        return fd

    def _keep(self, key: str, fd: int) -> None:
        """Keep a duplicate of ``fd`` (folder ``key``, just walked to) unless one is kept already or the
        cache is full or closed. A kept folder is never replaced: a descriptor lent out stays valid."""
        with self._lock:
            if key not in self._kept and len(self._kept) < self._limit and self._root_fd is not None:
                self._kept[key] = os.dup(fd)
                self._ids[key] = fd_identity(fd)

    def lend(self, rel: str | PurePosixPath, *, create: bool = False) -> tuple[int, bool]:
        """A descriptor of folder ``root / rel`` (opened as :meth:`open` does) and whether it is lent:
        True for the kept descriptor itself, which the caller must not close (it stays open until
        :meth:`close`, the end of the run: no ``dup`` and ``close`` per file), False for a new one the
        caller closes (a folder beyond ``limit``). Raises like :meth:`open`."""
        key = self._chain(rel).key
        with self._lock:
            kept = self._kept.get(key)
        if kept is not None:
            return kept, True
        fd = self.open(key, create=create)
        with self._lock:
            kept = self._kept.get(key)
        if kept is None:
            return fd, False
        os.close(fd)
        return kept, True

    def in_place(self, rel: str | PurePosixPath, fd: int) -> bool:
        """True when folder ``root / rel``, reached from the root without following a symlink, is the
        folder ``fd`` designates: the check before publishing into a kept folder that it was not moved or
        replaced (by a symlink, say) meanwhile.

        Where every folder on the way is kept, each name is looked up with ``fstatat(AT_SYMLINK_NOFOLLOW)``
        in its kept parent, which must be the folder found there (one call per component, against a walk's
        open and close of each); else the path is walked afresh (:meth:`walk`). Raises ``OSError`` other
        than a missing folder."""
        chain = self._chain(rel)
        if not chain.names:
            return fd_identity(fd) == fd_identity(self._root())
        root = self._root()
        with self._lock:  # the kept descriptors stay open while they are used
            kept, ids = self._kept, self._ids
            want = ids[chain.key] if kept.get(chain.key) == fd else fd_identity(fd)
            if all(prefix in kept for prefix in chain.parents):
                parents = [root, *(kept[prefix] for prefix in chain.parents)]
                return _names_lead_to(chain.names, parents, [*(ids[p] for p in chain.parents), want])
        try:
            with closing_fd(self.walk(rel)) as fresh:
                return same_inode(fresh, fd)
        except (PathNotAllowed, FileNotFoundError):
            return False

    def _chain(self, rel: str | PurePosixPath) -> _Chain:
        """The names of folder ``rel`` and of the folders above it (:func:`components`), parsed once per
        folder. Raises :class:`PathNotAllowed` like :func:`components`."""
        text = str(rel)
        chain = self._chains.get(text)
        if chain is None:
            names = tuple(components(text))
            parents = tuple("/".join(names[:depth]) for depth in range(1, len(names)))
            chain = _Chain("/".join(names), names, parents)
            with self._lock:
                if len(self._chains) < 4 * self._limit:
                    self._chains[text] = chain
        return chain

    def check_placed(self, rel: str | PurePosixPath, fd: int) -> None:
        """Raise :class:`PathNotAllowed` unless folder ``fd`` is at ``root / rel`` (:meth:`in_place`)."""
        if not self.in_place(rel, fd):
            raise _moved(self._chain(rel).key)

    def walk(self, rel: str | PurePosixPath) -> int:
        """A new descriptor of ``root / rel`` walked afresh from the root (never a kept one), to check
        that a folder is still where it was. Raises like :func:`open_folder` without ``create``."""
        return open_below(self._root(), rel)

    @contextmanager
    def folder(self, rel: str | PurePosixPath, *, create: bool = False) -> Iterator[int]:
        """:meth:`open` as a context manager that closes the descriptor it yields."""
        with closing_fd(self.open(rel, create=create)) as fd:
            yield fd

    @contextmanager
    def placed(self, rel: str | PurePosixPath, *, create: bool = False) -> Iterator[int]:
        """:meth:`folder`, but the folder yielded is at ``root / rel`` now: a kept descriptor is checked
        with :meth:`in_place` first, so a link or name made in it lands at its path, not in a folder moved
        away since (perhaps out of the root) and replaced by a symlink. The descriptor may be the kept one
        (:meth:`lend`): use it only inside the block, never close it.
        Raises :class:`PathNotAllowed` for a folder moved or replaced, and like :meth:`open`."""
        fd, lent = self.lend(rel, create=create)
        try:
            self.check_placed(rel, fd)
            yield fd
        finally:
            if not lent:
                os.close(fd)

    def close(self) -> None:
        """Close every kept descriptor, once no thread uses the cache any more (the end of a run); it may
        be used again afterwards and then walks afresh."""
        with self._lock:
            kept, self._kept = list(self._kept.values()), {}
            self._ids = {}
            root, self._root_fd = self._root_fd, None
        for fd in [*kept, *([root] if root is not None else [])]:
            os.close(fd)


def _moved(key: str) -> PathNotAllowed:
    """The error for folder ``key`` found moved or replaced since it was kept."""
    return PathNotAllowed(
        f"{key!r} was moved or replaced (by a symbolic link, say) while the job ran; nothing was "
        "written there"
    )


def _names_lead_to(names: tuple[str, ...], parents: list[int], expected: list[tuple[int, int]]) -> bool:
    """True when each of ``names`` (plain names: :func:`components` checked them), looked up without
    following a symlink in its parent's descriptor (``parents[i]``), is a folder with the (device, inode)
    ``expected[i]``."""
    for name, parent, want in zip(names, parents, expected, strict=True):
        try:
            st = os.stat(name, dir_fd=parent, follow_symlinks=False)
        except (FileNotFoundError, NotADirectoryError):
            return False
        if not stat.S_ISDIR(st.st_mode) or identity(st) != want:
            return False
    return True
