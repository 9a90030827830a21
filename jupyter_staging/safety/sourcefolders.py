"""Folders of local sources reached by descriptor: from ``/`` one name at a time, no symlink followed.

A listed source's locator is its resolved path (no symlink on it at listing time). Reading it, or hard-linking
it, by that path again would follow a folder replaced by a symlink since (to a place outside the source
roots, say). :class:`SourceFolders` reaches each folder from ``/`` with ``O_PATH | O_DIRECTORY |
O_NOFOLLOW`` (``open(2)``: an ``O_PATH`` descriptor needs search permission on the folders above, as a path
lookup does, not read permission on the folder itself: shared storage often has ``0711`` folders) and keeps
the descriptors of the folders used last, so a folder of many files is walked to once. A kept descriptor
designates the folder it was opened on, wherever that folder is moved later: its files are read from there,
never from what a symlink put in its place leads to.
"""

from __future__ import annotations

import errno
import os
import threading
from collections import OrderedDict

from jupyter_staging.errors import PathNotAllowed
from jupyter_staging.safety.descriptors import SOURCE_FOLDERS_PER_MILLE, descriptor_share
from jupyter_staging.safety.dirfd import check_name, components

#: How a source folder is opened: a path-only descriptor of a real folder, never through a symlink.
PATH_DIR_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def walk_to_folder(folder: str) -> int:
    """A new ``O_PATH`` descriptor of the absolute folder ``folder``, reached from ``/`` one component at a
    time without following a symlink (the caller closes it).

    Raises :class:`PathNotAllowed` (``path_not_allowed``) when ``folder`` is not absolute or a component is
    a symlink or not a folder; :class:`FileNotFoundError` when one is missing; :class:`PermissionError`
    when a folder on the way may not be searched."""
    if not folder.startswith("/"):
        raise PathNotAllowed(f"{folder!r} is not an absolute path")
    parts = components(folder.lstrip("/"))
    fd = os.open("/", PATH_DIR_FLAGS)
    try:
        for depth, part in enumerate(parts, start=1):
            try:
                child = os.open(part, PATH_DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                if exc.errno not in (errno.ENOTDIR, errno.ELOOP):
                    raise
                raise PathNotAllowed(
                    f"{'/' + '/'.join(parts[:depth])!r} is a symbolic link or a file, not a folder; "
                    "links are not followed when reading a listed source"
                ) from None
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_walked(path: str, flags: int) -> int:
    """A new descriptor of the absolute file ``path`` opened with ``flags | O_NOFOLLOW``, relative to its
    folder reached by :func:`walk_to_folder` (from ``/``, no symlink followed): the file that is at that
    path now, never one a folder swapped for a symlink leads to (the caller closes it). ``O_PATH`` in
    ``flags`` needs no read permission on the file; a symlink at ``path`` is then opened itself (the
    caller's ``fstat`` sees ``S_IFLNK``), as ``open(2)`` does with ``O_PATH | O_NOFOLLOW``.

    Raises :class:`PathNotAllowed` (``path_not_allowed``) when a folder on the way or the file itself is a
    symlink, or a folder on the way is a file; :class:`FileNotFoundError` when something is missing;
    :class:`PermissionError` when a folder may not be searched or the file not opened so."""
    folder, _, name = path.rpartition("/")
    folder_fd = walk_to_folder(folder or "/")
    try:
        return os.open(check_name(name), flags | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=folder_fd)
    except OSError as exc:
        if exc.errno != errno.ELOOP:
            raise
        raise PathNotAllowed(f"{path!r} is a symbolic link; links are not followed here") from None
    finally:
        os.close(folder_fd)


class SourceFolders:
    """Descriptors of the ``limit`` source folders used last (:func:`walk_to_folder`), for one source's
    lifetime. :meth:`open` returns a duplicate the caller closes, so a folder dropped from the cache (the
    oldest, beyond ``limit``) is closed without harm to a reader. Thread-safe."""

    def __init__(self, limit: int | None = None) -> None:
        #: At most 64, fewer under a low open-file limit (:func:`descriptor_share`).
        self._limit = (
            limit if limit is not None else descriptor_share(SOURCE_FOLDERS_PER_MILLE, low=4, high=64)
        )
        self._lock = threading.Lock()
        self._kept: OrderedDict[str, int] = OrderedDict()

    def open(self, folder: str) -> int:
        """A new ``O_PATH`` descriptor of the absolute folder ``folder``: a ``dup`` of the kept one, else
        walked to (and kept). Raises like :func:`walk_to_folder`."""
        with self._lock:
            kept = self._kept.get(folder)
            if kept is not None:
                self._kept.move_to_end(folder)
                return os.dup(kept)
        fd = walk_to_folder(folder)
        dropped: list[int] = []
        with self._lock:
            if folder not in self._kept:
                self._kept[folder] = os.dup(fd)
                while len(self._kept) > self._limit:
                    dropped.append(self._kept.popitem(last=False)[1])
        for old in dropped:
            os.close(old)
        return fd

    def close(self) -> None:
        """Close every kept descriptor (the cache may be used again afterwards)."""
        with self._lock:
            kept, self._kept = list(self._kept.values()), OrderedDict()
        for fd in kept:
            os.close(fd)
