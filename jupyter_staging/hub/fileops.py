"""The file work of the hub service, descriptor-based: copy, hard-link, symlink, stream a source.

Nothing here knows tornado or the Hub; every call runs on a worker thread. A source is a regular file on the
shared storage (:func:`check_source`), always opened by descriptor: its folder is reached from ``/`` one
component at a time without following a symlink (:func:`~jupyter_staging.safety.sourcefolders.open_walked`),
so a folder swapped for a symlink after the check is refused, never followed, and the file opened is
re-checked by inode against the one checked. A target is a name in a folder open as a descriptor
(:class:`~jupyter_staging.hub.areas.Target`); a copy is written there as an unnamed file (``O_TMPFILE``:
a service killed mid-copy leaves nothing behind), or where the system cannot, as ``<name>.<random>.part``
created with ``O_CREAT | O_EXCL | O_NOFOLLOW`` relative to that descriptor; it is fsynced and given its
final name with ``linkat`` (never replacing anything), so a symlink planted by the user is never followed
and nothing is ever overwritten. Files a job in the user's own server wrote are
:mod:`~jupyter_staging.hub.jobfiles`' business.
"""

from __future__ import annotations

import errno
import hashlib
import os
import secrets
import stat
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from jupyter_staging.errors import (
    DestinationExists,
    DestinationNotWritable,
    InvalidRequest,
    PathNotAllowed,
    SourceNotFound,
    StagingError,
)
from jupyter_staging.hub.areas import Target
from jupyter_staging.safety.copying import copy_stream
from jupyter_staging.safety.dirfd import (
    fsync_fd,
    name_with,
    write_all,
    write_refused,
)
from jupyter_staging.safety.paths import is_utf8, resolve_source
from jupyter_staging.safety.publishing import NO_FD_LINK, link_open_file, publish_open_at, unlink_if_names
from jupyter_staging.safety.sourcefolders import open_walked, walk_to_folder
from jupyter_staging.safety.unnamed import create_unnamed

#: Bytes per read when hashing or streaming a file.
BLOCK_SIZE = 1024 * 1024

#: Flags reading a file: never through a symlink, never blocking on a FIFO.
READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
#: Flags creating a file: it must not exist and must not be a symlink.
CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


# -- sources --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SourceFile:
    """A regular file on the shared storage: ``path`` is resolved (no symlinks), ``size`` in bytes."""

    path: Path
    size: int
    device: int
    inode: int

    @property
    def name(self) -> str:
        return self.path.name


def check_source(path: str, shared_roots: list[str]) -> SourceFile:
    """Resolve ``path`` (absolute) and check it is a regular file inside ``shared_roots`` after every
    symlink is followed; its size, device and inode are those of the file then opened by descriptor at
    the resolved path (:func:`_walk_open`: no symlink followed), not of a second look up of the path.

    Raises :class:`PathNotAllowed` (400, ``path_not_allowed``) for relative paths or paths outside the
    roots (including through a symlink, also one swapped in after the resolution), :class:`SourceNotFound`
    (400, ``source_not_found``) when it does not exist (``source_not_readable`` when it may not be
    reached), :class:`InvalidRequest` (400, ``source_not_a_file``) for folders and special files,
    (400, ``name_not_utf8``) when the resolved path holds a name that is not UTF-8 (it could be neither
    given as a target's name nor recorded as text).
    """
    if not shared_roots:
        raise StagingError("the service has no shared roots configured", code="not_configured", status=500)
    resolved = resolve_source(path, shared_roots)
    if not is_utf8(str(resolved)):
        raise InvalidRequest(
            f"source {path!r} is {str(resolved)!r}, a name that is not UTF-8 (its bytes are shown as "
            "\\udcXX); the service stages only files whose path is UTF-8 text: ask the archive's keepers "
            "to rename it",
            code="name_not_utf8",
        )
    fd = _walk_open(resolved, os.O_PATH)
    try:
        st = os.fstat(fd)
    finally:
        os.close(fd)
    if not stat.S_ISREG(st.st_mode):
        raise InvalidRequest(f"source {path!r} is not a regular file", code="source_not_a_file")
    return SourceFile(resolved, st.st_size, st.st_dev, st.st_ino)


def _walk_open(path: Path, flags: int) -> int:
    """A descriptor of the file at the resolved ``path`` (``flags``, ``O_NOFOLLOW`` added), its folder
    reached from ``/`` without following a symlink (:func:`open_walked`). Raises :class:`SourceNotFound`
    when it is missing (``source_not_found``) or may not be reached or opened (``source_not_readable``),
    :class:`PathNotAllowed` when a folder on the way (or the file, without ``O_PATH``) is a symlink."""
    try:
        return open_walked(str(path), flags)
    except FileNotFoundError:
        raise SourceNotFound(f"source {str(path)!r} does not exist (any more)") from None
    except PermissionError:  # its mode, or a folder's, changed since the check
        raise SourceNotFound(f"source {str(path)!r} is not readable", code="source_not_readable") from None
    except PathNotAllowed:
        raise PathNotAllowed(f"source {str(path)!r} passes through a symbolic link") from None


def _open_checked(source: SourceFile, flags: int) -> int:
    """A descriptor (``flags``) of the very file :func:`check_source` checked: reached by descriptor
    (:func:`_walk_open`), a regular file of the same device and inode, else ``source_changed`` (409): a
    folder on its path swapped for a symlink since the check (to a file outside the shared roots, say) is
    refused, never followed. Raises :class:`SourceNotFound` as :func:`_walk_open` does."""
    try:
        fd = _walk_open(source.path, flags)
    except PathNotAllowed:
        raise _changed(source) from None
    st = os.fstat(fd)
    if (st.st_dev, st.st_ino) != (source.device, source.inode) or not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise _changed(source)
    return fd


def _open_source(source: SourceFile) -> int:
    """An fd reading ``source`` (:func:`_open_checked`)."""
    return _open_checked(source, READ_FLAGS)


def sha256_of_fd(fd: int) -> tuple[int, str]:
    """``(size_bytes, sha256_hex)`` of the whole file open at ``fd`` (read with ``pread``)."""
    digest = hashlib.sha256()
    offset = 0
    while True:
        block = os.pread(fd, BLOCK_SIZE, offset)
        if not block:
            return offset, digest.hexdigest()
        digest.update(block)
        offset += len(block)


def source_sha256(source: SourceFile) -> str:
    """sha256 (hex) of a source file's bytes."""
    fd = _open_source(source)
    try:
        return sha256_of_fd(fd)[1]
    finally:
        os.close(fd)


# -- the file work --------------------------------------------------------------------------------


@dataclass
class Outcome:
    """Result of the file work: ``status`` ``succeeded`` or ``skipped`` (a duplicate); ``bytes`` the file
    size; ``sha256`` the hex digest of the bytes written (None for links)."""

    status: str
    bytes: int | None = None
    sha256: str | None = None

    @property
    def duplicate(self) -> bool:
        return self.status == "skipped"


def exists_error(target: Target) -> DestinationExists:
    """``target_exists`` (409) for a target holding a different file (it is never overwritten)."""
    return DestinationExists(
        f"{target.path} already exists with different content; it is never overwritten",
        code="target_exists",
    )


def check_duplicate(target: Target, source: SourceFile) -> bool:
    """True when the target already holds the same bytes as ``source`` (same size and sha256, or the
    very same inode); False when nothing is there.

    Raises :class:`DestinationExists` (409, ``target_exists``) when something else is there, including
    a symlink (which is never followed).
    """
    st = target.lstat()
    if st is None:
        return False
    if not stat.S_ISREG(st.st_mode) or st.st_size != source.size:
        raise exists_error(target)
    if (st.st_dev, st.st_ino) == (source.device, source.inode):
        return True
    fd = os.open(target.name, READ_FLAGS, dir_fd=target.dir_fd)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise exists_error(target)
        _, existing = sha256_of_fd(fd)
    finally:
        os.close(fd)
    if existing != source_sha256(source):
        raise exists_error(target)
    return True


class _FdWriter:
    """The ``write`` side :func:`~jupyter_staging.safety.copying.copy_stream` expects: a raw fd, hashed."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.sha256 = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes | memoryview) -> None:
        write_all(self.fd, data)
        self.sha256.update(data)
        self.size += len(data)


def local_copy(source: SourceFile, target: Target) -> Outcome:
    """Copy ``source`` to ``target``: written as an unnamed file in the target's folder (``O_TMPFILE``,
    :func:`_copy_unnamed`), so a service killed mid-copy leaves nothing behind, or where the system cannot
    make or name one as ``<name>.<random>.part`` (created with ``O_EXCL | O_NOFOLLOW`` in the target's folder
    fd, :func:`_copy_named`); fsynced, checked against the source size, made read-only (0444), given to the
    user when the service may (``fchown``), then linked under its final name, which must not exist
    (nothing is ever overwritten).

    Returns ``skipped`` for a duplicate: found before the copy, or published by another call while this
    one copied (the same bytes at the target). Raises :class:`DestinationExists` (``target_exists``) for a
    different file of that name, ``source_changed`` (409) when the source changed size while copied,
    :class:`DestinationNotWritable` (409) when the service's user may not write into the target's folder,
    ``source_not_readable`` (400) when it may no longer read the source.
    """
    if check_duplicate(target, source):
        return Outcome("skipped", source.size, source_sha256(source))
    src_fd = _open_source(source)
    try:
        return copy_open(src_fd, source, target)
    finally:
        os.close(src_fd)


def copy_open(src_fd: int, source: SourceFile, target: Target) -> Outcome:
    """:func:`local_copy` of the file open as ``src_fd`` (``source`` describes it: ``size`` in bytes, the
    path for messages), with no duplicate check first. Raises as :func:`local_copy`."""
    outcome = _copy_unnamed(src_fd, source, target)
    return outcome if outcome is not None else _copy_named(src_fd, source, target)


def _fill(src_fd: int, out_fd: int, source: SourceFile, target: Target) -> _FdWriter:
    """Copy the whole source open as ``src_fd`` (from its start) into ``out_fd``, fsync it, check its size
    (``source_changed``, 409, when the source changed size), make it 0444 and give it to the target's
    owner when there is one (by descriptor). Returns the writer (its ``size`` in bytes and ``sha256``)."""
    os.lseek(src_fd, 0, os.SEEK_SET)
    writer = _FdWriter(out_fd)
    with os.fdopen(src_fd, "rb", buffering=0, closefd=False) as reader:
        copy_stream(reader, writer, block_size=BLOCK_SIZE)  # type: ignore[arg-type]
    os.fsync(out_fd)
    if writer.size != source.size or os.fstat(src_fd).st_size != source.size:
        raise StagingError(
            f"source {str(source.path)!r} changed size while it was copied", code="source_changed", status=409
        )
    os.fchmod(out_fd, 0o444)
    if target.owner is not None:
        os.fchown(out_fd, target.owner.uid, target.owner.gid)
    return writer


def _copy_unnamed(src_fd: int, source: SourceFile, target: Target) -> Outcome | None:
    """The copy as an unnamed file (:func:`~jupyter_staging.safety.unnamed.create_unnamed`) linked in under
    the target's name through ``/proc/self/fd`` (never replacing anything): no name until it is complete,
    so a failure or a kill leaves nothing in the user's folder. None where the system cannot make such a
    file in that folder, or refuses to link it (:data:`NO_FD_LINK`): the caller copies to a named part.
    Raises as :func:`local_copy`."""
    out_fd = create_unnamed(target.dir_fd, 0o600)
    if out_fd is None:
        return None
    try:
        writer = _fill(src_fd, out_fd, source, target)
        try:
            link_open_file(out_fd, target.dir_fd, target.name)
        except DestinationExists:
            return _landed_meanwhile(target, writer)
        except OSError as err:
            if err.errno not in NO_FD_LINK:
                raise
            return None
        fsync_fd(target.dir_fd)
        return Outcome("succeeded", writer.size, writer.sha256.hexdigest())
    finally:
        os.close(out_fd)


def _copy_named(src_fd: int, source: SourceFile, target: Target) -> Outcome:
    """The copy written as ``<name>.<random>.part`` in the target's folder and published as that very file
    (:func:`publish_open_at`); the part is removed on failure (while its name still names it). A service
    killed mid-copy leaves it: only where unnamed files cannot be used. Raises as :func:`local_copy`."""
    part = name_with(target.name, f".{secrets.token_hex(4)}.part")  # within 255 bytes
    try:
        out_fd = os.open(part, CREATE_FLAGS, 0o600, dir_fd=target.dir_fd)
    except PermissionError as err:
        raise _refused(target, err) from None
    published = False
    try:
        writer = _fill(src_fd, out_fd, source, target)
        try:  # that very file, even if the user replaced ``part`` meanwhile; never replaces, never follows
            publish_open_at(out_fd, target.dir_fd, part, target.dir_fd, target.name)
        except DestinationExists:
            return _landed_meanwhile(target, writer)
        published = True
        return Outcome("succeeded", writer.size, writer.sha256.hexdigest())
    finally:
        if not published:
            with suppress(OSError):  # a folder no longer searchable: nothing more to do
                unlink_if_names(target.dir_fd, part, out_fd)
        os.close(out_fd)


def _landed_meanwhile(target: Target, writer: _FdWriter) -> Outcome:
    """The outcome of a copy whose final name was taken while it was written: ``skipped`` (a duplicate)
    when the target now holds the very bytes written (the same copy asked twice at once: the other call
    published first), else :class:`DestinationExists` (``target_exists``)."""
    digest = writer.sha256.hexdigest()
    if holds_bytes(target, writer.size, digest):
        return Outcome("skipped", writer.size, digest)
    raise exists_error(target)


def holds_bytes(target: Target, size: int, sha256: str) -> bool:
    """True when the target is a regular file (no symlink followed) of ``size`` bytes and that sha256."""
    try:
        fd = os.open(target.name, READ_FLAGS, dir_fd=target.dir_fd)
    except OSError:
        return False
    try:
        st = os.fstat(fd)
        return stat.S_ISREG(st.st_mode) and st.st_size == size and sha256_of_fd(fd) == (size, sha256)
    finally:
        os.close(fd)


def _refused(target: Target, err: PermissionError) -> DestinationNotWritable:
    """``destination_not_writable`` (409) for ``err`` met writing into the target's folder: the service's
    user may not write there (the folder's mode, an immutable flag). Names the target's file, no path."""
    return write_refused(target.name, err, who="the service's user")


def _unlink_quietly(name: str, dir_fd: int) -> None:
    try:
        os.unlink(name, dir_fd=dir_fd)
    except OSError:
        pass


def hardlink(source: SourceFile, target: Target) -> Outcome:
    """Hard-link ``source`` as ``target`` (instant; the archive and the area must share a file system).

    The link *is* the archive's inode, so its mode and owner are left alone: a ``chmod 0444`` or a
    ``chown`` to the user would change the shared source file for everyone. Archives are expected to be
    read-only to users already. ``sha256`` is not computed (the content is the source itself).

    Raises ``cross_device`` (400) across file systems, ``link_not_permitted`` (403) when the kernel's
    ``protected_hardlinks`` refuses, :class:`DestinationExists` (``target_exists``) for a different file,
    :class:`DestinationNotWritable` (409) when the service's user may not write into the target's folder.
    """
    if check_duplicate(target, source):
        return Outcome("skipped", source.size)
    pinned = _pin_source(source)
    try:
        _link_pinned(pinned, source, target)
    except FileExistsError:  # made meanwhile: the same link asked twice at once is a duplicate
        if check_duplicate(target, source):
            return Outcome("skipped", source.size)
        raise exists_error(target) from None
    except OSError as err:
        if err.errno == errno.EXDEV:
            raise InvalidRequest(
                "hardlink needs the shared storage and the user's area on one file system; use local_copy",
                code="cross_device",
            ) from None
        if err.errno == errno.EPERM:
            raise StagingError(
                "the system refused the hard link (protected_hardlinks); use local_copy",
                code="link_not_permitted",
                status=403,
            ) from None
        if isinstance(err, PermissionError):
            raise _refused(target, err) from None
        raise
    finally:
        os.close(pinned)
    fsync_fd(target.dir_fd)
    return Outcome("succeeded", source.size)


def _changed(source: SourceFile) -> StagingError:
    return StagingError(
        f"source {str(source.path)!r} changed since it was checked; nothing was read from it",
        code="source_changed",
        status=409,
    )


def _pin_source(source: SourceFile) -> int:
    """An ``O_PATH`` descriptor of ``source`` (:func:`_open_checked`): needs no read permission on the
    file."""
    return _open_checked(source, os.O_PATH)


def _link_pinned(fd: int, source: SourceFile, target: Target) -> None:
    """Hard-link the inode open as ``fd`` (:func:`_pin_source`) as ``target``: ``linkat`` of the magic link
    ``/proc/self/fd/<fd>`` with ``AT_SYMLINK_FOLLOW`` (proc(5); the same rules as any hard link, so
    ``protected_hardlinks`` still applies), so that what is linked is the inode checked, not whatever the
    path leads to by then. Where ``/proc`` is not mounted, the path is linked (no symlink followed at its
    end, its folder reached by descriptor: :func:`walk_to_folder`) and the new link checked to be that
    inode, else removed (``source_changed``)."""
    if os.path.lexists(f"/proc/self/fd/{fd}"):
        try:
            os.link(f"/proc/self/fd/{fd}", target.name, dst_dir_fd=target.dir_fd, follow_symlinks=True)
        except FileNotFoundError:
            if os.fstat(fd).st_nlink == 0:  # the source was removed since it was pinned
                raise _changed(source) from None
            raise  # the target's folder was removed meanwhile: target_missing, as for a copy or a symlink
        return
    try:
        folder_fd = walk_to_folder(str(source.path.parent))
    except PathNotAllowed:
        raise _changed(source) from None
    try:
        name = source.path.name
        os.link(name, target.name, src_dir_fd=folder_fd, dst_dir_fd=target.dir_fd, follow_symlinks=False)
    finally:
        os.close(folder_fd)
    try:
        st = os.stat(target.name, dir_fd=target.dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        raise _changed(source) from None
    if (st.st_dev, st.st_ino) != (source.device, source.inode) or not stat.S_ISREG(st.st_mode):
        _unlink_quietly(target.name, target.dir_fd)
        raise _changed(source)


def _links_to(target: Target, source: SourceFile) -> bool:
    """True when the target is a symlink to the source's path; False when nothing is there. Raises
    :class:`DestinationExists` (``target_exists``) for anything else there."""
    st = target.lstat()
    if st is None:
        return False
    if stat.S_ISLNK(st.st_mode) and os.readlink(target.name, dir_fd=target.dir_fd) == str(source.path):
        return True
    raise exists_error(target)


def symlink(source: SourceFile, target: Target) -> Outcome:
    """Create ``target`` as a symbolic link to the resolved ``source`` path. A link to the same path already
    there is a duplicate; anything else there is ``target_exists``; a folder the service's user may not
    write into is :class:`DestinationNotWritable`.

    The link keeps the service's owner, even where the service gives files to the user: ``symlink(2)``
    makes it by name in a folder the user owns, and a ``chown`` of that name would change whatever the
    user renamed onto it in between (a hard link to another owner's file). A symlink's owner matters
    little: the user may remove or rename it (their folder), and it leads where its text says."""
    if _links_to(target, source):
        return Outcome("skipped", source.size)
    try:
        os.symlink(source.path, target.name, dir_fd=target.dir_fd)
    except FileExistsError:  # made meanwhile: the same link asked twice at once is a duplicate
        if _links_to(target, source):
            return Outcome("skipped", source.size)
        raise exists_error(target) from None
    except PermissionError as err:
        raise _refused(target, err) from None
    fsync_fd(target.dir_fd)
    return Outcome("succeeded", source.size)


def open_download(source: SourceFile) -> BinaryIO:
    """The source opened for streaming to the caller (unbuffered binary file, caller closes it)."""
    return os.fdopen(_open_source(source), "rb", buffering=0)
