"""Publishing a part file under its final name, never replacing anything and never publishing another file.

Without overwriting: :func:`publish_at` uses ``linkat(part, final)`` then ``unlinkat(part)``. ``linkat``
fails with ``EEXIST`` whatever is at ``final`` (a file, a folder, a dangling symlink) and does not follow
``part`` if it is a symlink, in one system call, so the check and the publication cannot be separated by
another process (a ``stat`` then ``rename`` could: ``rename`` silently replaces a file made in between). Only
on file systems without hard links does it fall back to ``fstatat`` + ``renameat`` (its window is documented
there). The hub service does the same for users' areas (:mod:`jupyter_staging.hub.fileops`).

The very file written: a user's folder is the user's to change, and a ``.part`` name may name another file by
the time it is published. :func:`publish_open_at` links the open file itself (``linkat`` of
``/proc/self/fd/N``) and removes the ``.part`` name only while it still names that file
(:func:`names_file`). Folders are reached by descriptor (:mod:`jupyter_staging.safety.dirfd`).
"""

from __future__ import annotations

import errno
import os
import secrets
from contextlib import suppress
from pathlib import Path

from jupyter_staging.errors import DestinationExists, PathNotAllowed
from jupyter_staging.safety.dirfd import check_name, fsync_dir, fsync_fd, lstat_at, unlink_name, write_refused

#: errno values of ``linkat`` meaning "no hard links here": publish with ``renameat`` instead.
_NO_LINKS = {errno.EPERM, errno.EOPNOTSUPP, errno.ENOSYS, errno.EMLINK}

#: Where Linux shows the files a process has open, as links (proc(5)): linking one names the open file.
PROC_FD = "/proc/self/fd"
#: :func:`link_open_file` failed this way: no ``/proc`` (ENOENT), refused by the system or a security
#: module (EACCES, EPERM), another file system (EXDEV), no magic links (ELOOP), or (for a file that was
#: named) the file has no name left, which Linux does not link again (ENOENT).
NO_FD_LINK = {errno.ENOENT, errno.EACCES, errno.EPERM, errno.EXDEV, errno.ELOOP}


def link_open_file(fd: int, dst_dir_fd: int, final: str) -> None:
    """Name the file open as ``fd`` ``final`` in ``dst_dir_fd``, never replacing anything: ``linkat`` of
    ``/proc/self/fd/<fd>`` with ``AT_SYMLINK_FOLLOW`` (open(2), "O_TMPFILE"), which links the open file
    itself (an unnamed one too), whatever any name holds. Raises :class:`DestinationExists` when ``final``
    exists (a symlink or folder included); ``OSError`` else (:data:`NO_FD_LINK`: not linked this way
    here)."""
    try:
        os.link(f"{PROC_FD}/{fd}", final, dst_dir_fd=dst_dir_fd, follow_symlinks=True)
    except FileExistsError:
        raise DestinationExists.not_overwritten(final) from None


def publish_open_at(
    fd: int, src_dir_fd: int, part: str, dst_dir_fd: int, final: str, *, sync: bool = True
) -> None:
    """Give the file open as ``fd``, written under the name ``part`` in ``src_dir_fd``, the name ``final``
    in ``dst_dir_fd``, never replacing anything: the very file open as ``fd``, whatever ``part`` names by
    then. A user's folder is the user's to change: a ``.part`` name replaced while the file was written
    (by another file, a symlink, a hard link to someone else's file) is never published in its place.

    ``linkat`` of ``/proc/self/fd/<fd>`` with ``AT_SYMLINK_FOLLOW`` (open(2), "O_TMPFILE"; it links the
    open file itself), then ``part`` is removed only while it still names that file (a replacement is left
    as it is), then the destination folder is fsynced unless ``sync`` is False (as :func:`publish_at`).
    Where the system refuses that link (no ``/proc``, a security module; or the file has no name left,
    which Linux does not link again: ``ENOENT``), ``part`` is checked to name that file and published by
    name (:func:`publish_at`, which checks ``final`` to name that file after the link and removes ``part``
    only while it names it; without hard links, a replacement in the instant between the check and the
    rename is the one window left).

    Raises :class:`DestinationExists` when ``final`` exists, :class:`PathNotAllowed` (nothing published)
    when ``part`` no longer names the file, :class:`DestinationNotWritable` when a folder may not be
    written into."""
    check_name(part)
    check_name(final)
    try:
        link_open_file(fd, dst_dir_fd, final)
    except OSError as err:
        if err.errno not in NO_FD_LINK | _NO_LINKS:  # by name below: publish_at maps the rest
            raise
        try:
            same = names_file(src_dir_fd, part, fd)
        except PermissionError as refused:  # a folder that may not be searched (any more)
            raise write_refused(final, refused) from None
        if not same:
            raise PathNotAllowed(
                f"{final}: its part file was replaced while it was written; nothing was published"
            ) from None
        publish_at(src_dir_fd, part, dst_dir_fd, final, sync=sync, fd=fd)
        return
    unlink_if_names(src_dir_fd, part, fd)
    if sync:
        fsync_fd(dst_dir_fd)


def unlink_if_names(dir_fd: int, name: str, fd: int) -> bool:
    """Remove ``name`` from ``dir_fd`` only while it names the file open as ``fd`` (:func:`names_file`): a
    file, symlink or hard link the user put at that name since is left as it is. Returns True when the
    name was removed, False when it names another file or nothing. Raises ``OSError`` when the name cannot
    be looked at or removed (a folder that may not be searched or written into any more)."""
    return names_file(dir_fd, name, fd) and unlink_name(dir_fd, name)


def names_file(dir_fd: int, name: str, fd: int) -> bool:
    """Whether ``name`` in ``dir_fd`` (not followed) names the file open as ``fd`` (same device and inode):
    not a file put at that name since, in a folder its user may change. Raises ``OSError`` when either
    cannot be looked at."""
    named = lstat_at(dir_fd, name)
    return named is not None and os.path.samestat(named, os.fstat(fd))


def publish_at(
    src_dir_fd: int, part: str, dst_dir_fd: int, final: str, *, sync: bool = True, fd: int | None = None
) -> None:
    """Give ``part`` (in ``src_dir_fd``) the name ``final`` (in ``dst_dir_fd``), never replacing
    anything: ``linkat`` + ``unlinkat`` (race-free, see the module's docstring), then the destination
    folder is fsynced — unless ``sync`` is False: the caller then fsyncs that folder itself before it
    relies on the name surviving a crash (the engine does it once per batch of chunk records). Where the
    file system has no hard links, ``fstatat`` then ``renameat``: a file made at ``final`` between the
    two calls would be replaced (no ``RENAME_NOREPLACE`` from Python).

    ``fd``: the file open as ``fd`` is the one ``part`` is to name (the caller checked it): after the link,
    ``final`` is checked to name it too, else the new name is taken back and :class:`PathNotAllowed` raised
    (``part`` was replaced in between; the replacement stays at ``part``), and ``part`` is removed only while
    it still names that file.

    Raises :class:`DestinationExists` when ``final`` exists (a symlink or folder included),
    :class:`DestinationNotWritable` when a folder may not be written into (any more)."""
    check_name(part)
    check_name(final)
    try:
        os.link(part, final, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd, follow_symlinks=False)
    except FileExistsError:
        raise DestinationExists.not_overwritten(final) from None
    except OSError as err:
        if err.errno not in _NO_LINKS:
            if isinstance(err, PermissionError):  # EACCES (EPERM means no hard links here)
                raise write_refused(final, err) from None
            raise
        if lstat_at(dst_dir_fd, final) is not None:
            raise DestinationExists.not_overwritten(final) from None
        try:
            os.rename(part, final, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd)
        except PermissionError as refused:
            raise write_refused(final, refused) from None
    else:
        if fd is not None and not names_file(dst_dir_fd, final, fd):
            with suppress(OSError):
                os.unlink(final, dir_fd=dst_dir_fd)  # the name just made, of the replacement
            raise PathNotAllowed(
                f"{final}: its part file was replaced while it was published; nothing was published"
            )
        if fd is None:
            os.unlink(part, dir_fd=src_dir_fd)
        else:
            unlink_if_names(src_dir_fd, part, fd)
    if sync:
        fsync_fd(dst_dir_fd)


def publish(tmp: Path, final: Path, *, sync: bool = True) -> None:
    """Give ``tmp`` the name ``final`` without ever replacing an existing ``final``.

    Uses ``link`` + ``unlink`` (atomic and refuses an existing target); on file systems without hard
    links falls back to an existence check and ``rename``. Then ``final``'s folder is fsynced, unless
    ``sync`` is False (the caller fsyncs it before relying on the name surviving a crash).

    Raises :class:`DestinationExists` if ``final`` already exists.
    """
    try:
        os.link(tmp, final)
    except FileExistsError:
        raise DestinationExists.not_overwritten(final.name) from None
    except OSError:
        if final.exists() or final.is_symlink():
            raise DestinationExists.not_overwritten(final.name) from None
        os.rename(tmp, final)
    else:
        os.unlink(tmp)
    if sync:
        fsync_dir(final.parent)


def unlink_checked(dir_fd: int, name: str, checked: os.stat_result) -> bool:
    """Remove ``name`` from ``dir_fd`` only while it is the file ``checked`` (the ``lstat`` of it the caller
    judged: same device and inode, size and modification time), with no window between that check and the
    removal: the name is first moved to a private, unguessable name in the same folder (one ``renameat``
    moves whatever the name holds at that instant, and nothing else), what was moved is checked, and only
    then removed. Another file renamed onto ``name`` after the caller's check is given its name back
    (``linkat``, never replacing anything) and stays; should yet another file have taken the name in that
    instant, the moved one keeps the private name rather than replace it.

    Returns True when the checked file was removed, False when the name held another file or nothing.
    Raises ``OSError`` when the name cannot be moved or removed (a folder not writable: ``EACCES``)."""
    aside = f".staging-removing-{secrets.token_hex(16)}"
    try:
        os.rename(check_name(name), aside, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except FileNotFoundError:
        return False
    moved = lstat_at(dir_fd, aside)
    if moved is None:  # the private name removed meanwhile (the folder is the user's): nothing to do
        return False
    if os.path.samestat(moved, checked) and (moved.st_size, moved.st_mtime_ns) == (
        checked.st_size,
        checked.st_mtime_ns,
    ):
        return unlink_name(dir_fd, aside)
    _put_back(dir_fd, aside, name)
    return False


def _put_back(dir_fd: int, aside: str, name: str) -> None:
    """Give the file :func:`unlink_checked` moved to ``aside`` its ``name`` back, never replacing a file
    that took the name since (then it stays at ``aside``)."""
    try:
        os.link(aside, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
    except FileExistsError:
        return
    except OSError as err:
        if err.errno not in _NO_LINKS:  # no hard links here (or a folder): by rename, the name still free
            raise
        if lstat_at(dir_fd, name) is None:
            os.rename(aside, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        return
    unlink_name(dir_fd, aside)
