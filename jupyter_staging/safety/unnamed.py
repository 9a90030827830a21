"""Unnamed files (``O_TMPFILE``): a small file written with no name in its final folder, named once verified.

A file made with ``O_TMPFILE`` has no name until it is linked into its folder through
``/proc/self/fd/<n>`` (open(2), "O_TMPFILE"), so a failure, a pause or a crash before that leaves nothing
behind, and there is no ``.part`` name to create, tag, check or remove. Where the kernel, the file system or
procfs cannot do this, :func:`create_unnamed` says so (None) and callers write a named ``.part``
(:mod:`jupyter_staging.safety.partfile`).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import secrets

# An unnamed file is linked into its folder, and re-opened, through ``PROC_FD/<n>`` (open(2),
# "O_TMPFILE"); ``linkat`` with ``AT_EMPTY_PATH`` would need a capability. Where that link is refused
# (``NO_FD_LINK``: a sandbox, a hardened procfs), the file is copied to a named part instead, and no more
# are made unnamed.
from jupyter_staging.safety.dirfd import (
    check_name,
    create_file,
    fsync_fd,
    name_with,
    write_refused,
)
from jupyter_staging.safety.publishing import (
    NO_FD_LINK,
    PROC_FD,
    link_open_file,
    publish_open_at,
    unlink_if_names,
)

#: errno values of ``open(O_TMPFILE)`` meaning "not on this kernel or file system" (open(2): EISDIR from
#: kernels without ``O_TMPFILE``, EOPNOTSUPP from file systems without it).
_NO_TMPFILE = {errno.EISDIR, errno.EOPNOTSUPP, errno.EINVAL}


@functools.cache
def _procfs() -> bool:
    """True where unnamed files can be made and named (``O_TMPFILE`` and procfs), looked up once."""
    return hasattr(os, "O_TMPFILE") and os.path.isdir(PROC_FD)


def create_unnamed(dir_fd: int, mode: int = 0o666) -> int | None:
    """A new unnamed regular file in folder ``dir_fd`` (``O_TMPFILE``, read-write, ``mode`` before the
    umask), given a name only by :func:`publish_fd_at`; a crash or a close before that leaves nothing
    behind. None where the kernel or the file system cannot make one, or procfs is missing (it could not
    be named then), and where the folder may not be written into (``EACCES`` / ``EPERM``: the named part
    file the caller makes instead fails with :class:`~jupyter_staging.errors.DestinationNotWritable`, naming
    it). Raises ``OSError`` for any other failure (``ENOSPC``)."""
    if _unnamed_refused or not _procfs():
        return None
    try:
        return os.open(".", os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, mode, dir_fd=dir_fd)
    except OSError as err:
        if err.errno in _NO_TMPFILE or isinstance(err, PermissionError):
            return None
        raise


def _writable(dir_fd: int) -> bool:
    """Whether this process may make entries in folder ``dir_fd`` (``faccessat`` with the effective ids)."""
    return os.access(".", os.W_OK | os.X_OK, dir_fd=dir_fd, effective_ids=True)


def reopen_unnamed(fd: int, flags: int = os.O_RDONLY | os.O_CLOEXEC) -> int:
    """A second descriptor (read-only by default) on the file open as ``fd``, named or not, through
    :data:`PROC_FD`. Raises ``OSError``."""
    return os.open(f"{PROC_FD}/{fd}", flags)


#: Set once linking an unnamed file was refused in this process: :func:`create_unnamed` then makes none.
_unnamed_refused = False


def publish_fd_at(fd: int, dst_dir_fd: int, final: str, *, sync: bool = True) -> None:
    """Give the unnamed file open as ``fd`` (made with ``O_TMPFILE``) the name ``final`` in
    ``dst_dir_fd``, never replacing anything: ``linkat`` of ``/proc/self/fd/<fd>`` with
    ``AT_SYMLINK_FOLLOW`` (open(2), "O_TMPFILE"), which fails with ``EEXIST`` whatever is at ``final``; then
    the folder is fsynced unless ``sync`` is False (as :func:`~jupyter_staging.safety.publishing.publish_at`).

    Where the system refuses that link (:data:`~jupyter_staging.safety.publishing.NO_FD_LINK`), the bytes are
    copied to a new file ``<final>.<8 hex>.part`` in the same folder, fsynced and published while its name
    still names it (:func:`_publish_copy`; that file removed on any failure), and no later file of this
    process is made unnamed.

    Raises :class:`DestinationExists` when ``final`` exists, :class:`DestinationNotWritable` when
    ``dst_dir_fd`` may not be written into (then unnamed files stay in use), :class:`PathNotAllowed` when
    the copy's name was taken over before it was published; ``OSError`` else."""
    global _unnamed_refused
    check_name(final)
    try:
        link_open_file(fd, dst_dir_fd, final)
    except OSError as err:
        if err.errno not in NO_FD_LINK:
            raise
        if isinstance(err, PermissionError) and not _writable(dst_dir_fd):
            raise write_refused(final, err) from None  # this folder's permissions, not the system's way
        _unnamed_refused = True
        _publish_copy(fd, dst_dir_fd, final)
    if sync:
        fsync_fd(dst_dir_fd)


def _publish_copy(fd: int, dir_fd: int, final: str) -> None:
    """Copy the whole file open as ``fd`` to a new file of ``dir_fd`` with a name of its own
    (``<final>.<8 hex>.part``, ``O_EXCL``: nothing of anyone else is touched), fsync it and publish it as
    ``final`` (not fsyncing the folder) while that name still names the copy
    (:func:`~jupyter_staging.safety.publishing.publish_open_at`: a file put at the part's name meanwhile is
    neither published nor removed). Raises :class:`DestinationExists`, :class:`PathNotAllowed` (the part's
    name was taken over) or ``OSError``; the copy is removed on failure."""
    part = check_name(name_with(final, f".{secrets.token_hex(4)}.part"))  # within 255 bytes
    out = create_file(dir_fd, part)
    try:
        offset, size = 0, os.fstat(fd).st_size
        while offset < size:
            block = os.pread(fd, min(size - offset, 1024 * 1024), offset)
            if not block:
                raise OSError(errno.EIO, f"{final}: the unnamed file shrank while it was copied")
            written = 0
            while written < len(block):
                written += os.pwrite(out, block[written:], offset + written)
            offset += len(block)
        os.fsync(out)
        publish_open_at(out, dir_fd, part, dir_fd, final, sync=False)
    except BaseException:
        with contextlib.suppress(OSError):
            unlink_if_names(dir_fd, part, out)
        raise
    finally:
        with contextlib.suppress(OSError):  # fsynced before: a failed close loses nothing, masks nothing
            os.close(out)
