"""File operations through directory descriptors, confined to a root the user cannot move.

The user's server writes into folders the user can change at any moment: a ``.part`` name or a whole
folder may be replaced by a symbolic link between two checks. Everything here works relative to a folder
descriptor instead of a path. The root (the server's ``root_dir``, trusted) is opened once, then every
folder below it one component at a time with ``O_RDONLY | O_DIRECTORY | O_NOFOLLOW``, so a symbolic link
(or a file) where a folder is expected is refused with :class:`PathNotAllowed` (``path_not_allowed``),
never followed. Files are created with ``O_CREAT | O_EXCL | O_NOFOLLOW`` relative to that descriptor,
given their final name by :mod:`jupyter_staging.safety.publishing` and removed with :func:`unlink_at`.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path, PurePosixPath

from jupyter_staging.errors import (
    DestinationExists,
    DestinationNotWritable,
    DestinationUnavailable,
    PathNotAllowed,
)

#: Flags opening a folder below the root: never through a symlink.
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
#: Flags creating a part file: it must not exist and must not be a symlink.
CREATE_FLAGS = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
#: Flags opening an existing part file to resume it: never through a symlink.
RESUME_FLAGS = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC
#: Flags reading a file below the root: never through a symlink, never blocking on a FIFO.
READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


#: Whose writes this thread makes, as :func:`write_refused` names them: the server's user, or on a Dask
#: worker the worker's (:func:`~jupyter_staging.engine.taskoutcomes.on_worker` sets it for each task).
WRITER: ContextVar[str] = ContextVar("jupyter_staging_writer", default="this server's user")


def write_refused(name: str, err: PermissionError, who: str | None = None) -> DestinationNotWritable:
    """The :class:`DestinationNotWritable` for ``err`` (``EACCES`` / ``EPERM``), met making or naming
    ``name`` in a folder: the folder's permissions (or an immutable flag) forbid this process (``who``
    runs it; default :data:`WRITER`) to write into it, as when they changed after the job was admitted.
    The message names ``name``, not its path."""
    who = who or WRITER.get()
    return DestinationNotWritable(
        f"{name!r} could not be written: {who} may not write into its folder "
        f"({err.strerror or 'permission denied'}); make the folder writable, or choose another destination"
    )


def components(rel: str | PurePosixPath) -> list[str]:
    """The folder names of ``rel`` (POSIX, relative; ``""`` or ``"."`` is the root itself: ``[]``).

    Raises :class:`PathNotAllowed` for an absolute path, ``..``, or a NUL character."""
    text = str(rel)
    if "\x00" in text:
        raise PathNotAllowed("a path below the root must not contain NUL characters")
    if text.startswith("/"):
        raise PathNotAllowed(f"{text!r} must be relative to the root")
    # As PurePosixPath(text).parts would split it (empty and "." components dropped), without building
    # a path object: this runs several times for every file staged.
    parts = [p for p in text.split("/") if p and p != "."]
    if ".." in parts:
        raise PathNotAllowed(f"{text!r} must not contain '..'")
    return parts


def folder_below(root: Path, path: Path | str) -> str:
    """The folder of ``path`` relative to ``root``, POSIX (``"."`` for ``root`` itself), compared as
    strings (both normalised absolute paths, as :meth:`Path.relative_to` compares them, lexically).
    Raises :class:`PathNotAllowed` when it is not below ``root``."""
    folder, top = os.path.dirname(path), str(root).rstrip("/")
    if folder == top or (not top and folder == "/"):
        return "."
    if folder.startswith(top + "/"):
        return folder[len(top) + 1 :]
    raise PathNotAllowed(f"{os.path.basename(path)}: its folder is outside the root")


def check_name(name: str) -> str:
    """``name`` when it is one plain entry name (no ``/``, not ``.``/``..``/empty, no NUL); else
    :class:`PathNotAllowed`."""
    if name in ("", ".", "..") or "/" in name or "\x00" in name:
        raise PathNotAllowed(f"{name!r} is not a plain file name")
    return name


#: errno values of opening the root meaning "not there now": missing, not to be entered, or a network or
#: FUSE mount gone stale or disconnected (nfs(5) ``ESTALE``; FUSE answers ``ENOTCONN`` once its daemon died).
_ROOT_UNAVAILABLE = {errno.ENOENT, errno.EACCES, errno.EPERM, errno.ESTALE, errno.ENOTCONN}


def open_root(root: Path, *, writing: bool = True) -> int:
    """A descriptor of the trusted ``root`` folder (symlinks above and at the root are the deployer's
    choice and followed).

    Raises :class:`PathNotAllowed` when it is not a folder; :class:`DestinationUnavailable`
    (``destination_unavailable``, 503) when it may not be entered or is on a mount gone stale, and, when
    ``writing``, when it is missing (moved, deleted or unmounted under the server: every writer of every
    job kind opens the root here, so each fails with that code). Without ``writing`` (a look, a removal,
    a clean-up) a missing root is :class:`FileNotFoundError`, as any missing folder below it: there is
    nothing there to read or remove. ``OSError`` else."""
    try:
        return os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except NotADirectoryError:
        raise PathNotAllowed(f"the root {str(root)!r} is not a folder") from None
    except OSError as exc:
        if exc.errno not in _ROOT_UNAVAILABLE or (exc.errno == errno.ENOENT and not writing):
            raise
        raise DestinationUnavailable(
            f"the folder jobs write below, {str(root)!r}, cannot be opened ({exc.strerror}); nothing was "
            "written there"
        ) from None


def open_dir(parent_fd: int, name: str, *, create: bool = False, mode: int = 0o777) -> int:
    """A descriptor of folder ``name`` in ``parent_fd``, opened without following a symlink; with
    ``create`` a missing folder is made first (``mode`` before the umask).

    Raises :class:`PathNotAllowed` when ``name`` is a symlink or a file (also when it became one after
    being made), :class:`FileNotFoundError` when missing and not ``create``."""
    check_name(name)
    try:
        return os.open(name, DIR_FLAGS, dir_fd=parent_fd)
    except FileNotFoundError:
        if not create:
            raise
    except OSError as err:
        if err.errno in (errno.ELOOP, errno.ENOTDIR):
            raise PathNotAllowed(f"{name!r} is a symbolic link or a file, not a folder") from None
        raise
    try:
        os.mkdir(name, mode, dir_fd=parent_fd)
    except FileExistsError:
        pass  # made meanwhile: the O_NOFOLLOW open below decides whether it is acceptable
    except PermissionError as err:
        raise write_refused(name, err) from None
    try:
        return os.open(name, DIR_FLAGS, dir_fd=parent_fd)
    except OSError as err:
        if err.errno in (errno.ELOOP, errno.ENOTDIR):
            raise PathNotAllowed(f"{name!r} was replaced by a symbolic link or a file") from None
        raise


def open_below(
    dir_fd: int,
    rel: str | PurePosixPath,
    *,
    create: bool = False,
    on_the_way: Callable[[str, int], object] | None = None,
    mode: int = 0o777,
) -> int:
    """A new descriptor of folder ``rel`` below the folder ``dir_fd``, reached one component at a time
    without following any symlink; missing folders are made with ``create`` (``mode`` before the umask).
    The caller closes it.
    ``on_the_way(prefix, fd)`` is called with each folder reached before the last (its path relative to
    ``dir_fd``, and a descriptor it may duplicate but not close).

    Raises :class:`PathNotAllowed` (``path_not_allowed``) for ``..``, an absolute ``rel``, or a symlink
    or file on the way; :class:`FileNotFoundError` for a missing folder without ``create``."""
    parts = components(rel)
    fd = os.open(".", DIR_FLAGS, dir_fd=dir_fd)  # a descriptor of its own, closed independently
    try:
        for depth, part in enumerate(parts, start=1):
            try:
                child = open_dir(fd, part, create=create, mode=mode)
            except PathNotAllowed:
                raise PathNotAllowed(
                    f"{'/'.join(parts[:depth])!r} is a symbolic link or a file, not a folder; links are "
                    "never followed when writing"
                ) from None
            os.close(fd)
            fd = child
            if on_the_way is not None and depth < len(parts):
                on_the_way("/".join(parts[:depth]), fd)
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_folder(
    root: Path, rel: str | PurePosixPath, *, create: bool = False, writing: bool | None = None
) -> int:
    """A descriptor of folder ``root / rel``, reached from ``root`` with :func:`open_below` (no symlink
    below ``root`` followed); missing folders are made with ``create``. The caller closes it.

    Raises :class:`PathNotAllowed` (``path_not_allowed``) for ``..``, an absolute ``rel``, or a symlink or
    file on the way; :class:`FileNotFoundError` for a missing folder without ``create``;
    :class:`DestinationUnavailable` as :func:`open_root` does (``writing``: default ``create``; a caller
    that writes into an existing folder says so)."""
    root_fd = open_root(root, writing=create if writing is None else writing)
    try:
        return open_below(root_fd, rel, create=create)
    finally:
        os.close(root_fd)


@contextmanager
def closing_fd(fd: int) -> Iterator[int]:
    """Yield the open descriptor ``fd`` and close it on exit."""
    try:
        yield fd
    finally:
        os.close(fd)


@contextmanager
def folder_fd(
    root: Path, rel: str | PurePosixPath, *, create: bool = False, writing: bool | None = None
) -> Iterator[int]:
    """:func:`open_folder` as a context manager that closes the descriptor."""
    with closing_fd(open_folder(root, rel, create=create, writing=writing)) as fd:
        yield fd


def same_inode(fd_a: int, fd_b: int) -> bool:
    """True when two descriptors are the same file or folder (device and inode)."""
    return fd_identity(fd_a) == fd_identity(fd_b)


def identity(st: os.stat_result) -> tuple[int, int]:
    """(device, inode) of a stat result: what a file or folder is, whatever its name."""
    return st.st_dev, st.st_ino


def fd_identity(fd: int) -> tuple[int, int]:
    """(device, inode) of the file or folder open as ``fd``. Raises ``OSError``."""
    return identity(os.fstat(fd))


def write_all(fd: int, data: bytes | memoryview) -> None:
    """Write all of ``data`` at ``fd``'s position, however short each ``write(2)`` is (POSIX allows a
    write to take fewer bytes than asked: a signal, a nearly full disk). Raises ``OSError`` when one is
    refused (ENOSPC, EFBIG, EIO), and EIO when one takes no byte and reports no error."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        if not n:
            raise OSError(errno.EIO, "a write took no bytes and reported no error")
        view = view[n:]


def lstat_at(dir_fd: int, name: str) -> os.stat_result | None:
    """``lstat`` of ``name`` in ``dir_fd`` (a symlink is described, not followed); None when absent."""
    try:
        return os.stat(check_name(name), dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def create_file(dir_fd: int, name: str, mode: int = 0o666) -> int:
    """Create ``name`` in ``dir_fd`` with ``O_CREAT | O_EXCL | O_NOFOLLOW`` (read-write, ``mode`` before
    the umask); returns its descriptor. Raises :class:`FileExistsError` when anything (a symlink too)
    already has that name, :class:`DestinationNotWritable` when the folder may not be written into."""
    try:
        return os.open(check_name(name), CREATE_FLAGS, mode, dir_fd=dir_fd)
    except PermissionError as err:
        raise write_refused(name, err) from None


def open_existing(dir_fd: int, name: str, flags: int = RESUME_FLAGS) -> int | None:
    """Open the regular file ``name`` in ``dir_fd`` with ``O_NOFOLLOW`` (default read-write, to resume a
    part file); None when absent. ``O_NONBLOCK`` in ``flags`` serves the open alone (a FIFO put at the
    name is then refused, not waited on): it is cleared once the file is known to be regular, since some
    file systems (Lustre) honour it for a regular file's reads and writes. Raises :class:`PathNotAllowed`
    when it is a symlink or not a regular file."""
    try:
        fd = os.open(check_name(name), flags | os.O_NOFOLLOW, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    except OSError as err:
        if err.errno in (errno.ELOOP, errno.EISDIR, errno.ENXIO):
            raise PathNotAllowed(f"{name!r} is a symbolic link or not a regular file") from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise PathNotAllowed(f"{name!r} is not a regular file")
    if flags & os.O_NONBLOCK:
        os.set_blocking(fd, True)
    return fd


def fsync_dir(folder: Path) -> None:
    """fsync a directory so a rename in it survives a crash.

    A no-op where the folder cannot be opened for reading or the file system cannot fsync a folder
    (:data:`FSYNC_UNSUPPORTED`); a failed fsync (EIO) raises
    :class:`OSError`.
    """
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        fsync_fd(fd)
    finally:
        os.close(fd)


#: How many names :func:`set_aside_at` tries (``_<name>.set-aside-<suffix>``, then ``-2``, ``-3``, ...).
SET_ASIDE_TRIES = 100


def set_aside_name(name: str, suffix: str, attempt: int = 1) -> str:
    """The name entry ``name`` is set aside as: ``_<name>.set-aside-<suffix>`` (``-<attempt>`` added from
    the second attempt on), ``name`` cut short to keep it within :data:`NAME_MAX_BYTES`. The leading ``_``
    keeps it out of what Parquet readers take as a dataset's files (Arrow's datasets, so
    ``pd.read_parquet`` of a table's folder, skip names starting with ``_`` or ``.``), while the file
    browser still shows it."""
    tail = f".set-aside-{suffix}" + ("" if attempt == 1 else f"-{attempt}")
    return name_with(f"_{name}", tail)


def set_aside_at(dir_fd: int, name: str, suffix: str, *, into: int | None = None) -> str:
    """Rename entry ``name`` of ``dir_fd`` (a symlink itself, never its target) to the first name of
    :func:`set_aside_name` (``_<name>.set-aside-<suffix>``, ``...-2``, ...) that nothing has in the folder
    (or in folder ``into``, where it is moved to: the same file system); returns that name. Nothing is
    removed: a file set aside before keeps its name. Raises
    :class:`~jupyter_staging.errors.DestinationExists` when :data:`SET_ASIDE_TRIES` names are all taken,
    ``OSError`` when the rename fails (``EACCES``; ``ENOENT``: ``name`` is gone)."""
    for attempt in range(1, SET_ASIDE_TRIES + 1):
        new_name = check_name(set_aside_name(name, suffix, attempt))
        if rename_noreplace_at(dir_fd, name, new_name, into=into):
            return new_name
    raise DestinationExists(f"{name}: {SET_ASIDE_TRIES} files set aside already; not set aside again")


def _load_renameat2() -> Callable[..., int] | None:
    """``renameat2(2)`` of the C library (glibc 2.28 and later), or None."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        function = libc.renameat2
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function  # type: ignore[no-any-return]


_renameat2 = _load_renameat2()
#: ``RENAME_NOREPLACE`` of ``renameat2(2)`` (linux/fs.h): fail with ``EEXIST`` rather than replace.
RENAME_NOREPLACE = 1


def rename_noreplace_at(dir_fd: int, name: str, new_name: str, *, into: int | None = None) -> bool:
    """Rename entry ``name`` of ``dir_fd`` (a symlink itself) to ``new_name`` in the same folder (or in
    folder ``into``: the same file system) unless something has that name: True when renamed, False when
    ``new_name`` was taken. One atomic ``renameat2(2)`` with ``RENAME_NOREPLACE`` (Linux 3.15; ext4, XFS,
    Btrfs, tmpfs); where the kernel or the file system has no such flag (``ENOSYS``, ``EINVAL``: NFS, for
    one), a container's seccomp filter refuses the call (``EPERM``; a real ``EPERM`` is raised by the
    rename after) or the C library has no such call, ``new_name`` is checked with ``lstat`` first and then
    renamed: a file made at ``new_name`` between the two would be replaced. Raises ``OSError`` when the
    rename fails otherwise (``ENOENT``: ``name`` is gone; ``EACCES``)."""
    target_fd = dir_fd if into is None else into
    if _renameat2 is not None:
        if _renameat2(dir_fd, os.fsencode(name), target_fd, os.fsencode(new_name), RENAME_NOREPLACE) == 0:
            return True
        code = ctypes.get_errno()
        if code == errno.EEXIST:
            return False
        if code not in (errno.ENOSYS, errno.EINVAL, errno.EPERM):  # EPERM: a seccomp filter without it
            raise OSError(code, os.strerror(code), name)
    if lstat_at(target_fd, new_name) is not None:
        return False
    os.rename(name, new_name, src_dir_fd=dir_fd, dst_dir_fd=target_fd)
    return True


#: The longest name of a folder entry, in bytes (``NAME_MAX`` of ext4, XFS, NFS and most others).
NAME_MAX_BYTES = 255


def name_with(name: str, tail: str) -> str:
    """``name + tail`` (``tail`` ASCII), ``name`` cut so the whole is at most :data:`NAME_MAX_BYTES` bytes:
    a character cut in two, and bytes of a name that are not UTF-8, are left out of a cut name."""
    raw = os.fsencode(name)
    room = NAME_MAX_BYTES - len(tail)
    if len(raw) <= room:
        return name + tail
    return raw[:room].decode("utf-8", errors="ignore") + tail


def unlink_at(dir_fd: int, name: str) -> bool:
    """Remove the file or symlink ``name`` of ``dir_fd`` (a symlink is removed, never followed; a
    folder is left alone). Returns True when something was removed."""
    st = lstat_at(dir_fd, name)
    if st is None or stat.S_ISDIR(st.st_mode):
        return False
    return unlink_name(dir_fd, name)


def unlink_name(dir_fd: int, name: str) -> bool:
    """``unlinkat`` of ``name`` in ``dir_fd``: True when removed, False when nothing had that name (any
    more). Raises ``OSError`` otherwise (a folder: ``EISDIR``; a folder not writable: ``EACCES``)."""
    try:
        os.unlink(name, dir_fd=dir_fd)
    except FileNotFoundError:
        return False
    return True


def mkdir_at(dir_fd: int, name: str, mode: int = 0o777) -> None:
    """Make folder ``name`` in ``dir_fd`` (``mode`` before the umask); an existing one is fine. Raises
    :class:`DestinationNotWritable` when ``dir_fd`` may not be written into."""
    try:
        os.mkdir(check_name(name), mode, dir_fd=dir_fd)
    except FileExistsError:
        pass
    except PermissionError as err:
        raise write_refused(name, err) from None


def rmdir_at(dir_fd: int, name: str) -> bool:
    """Remove the empty folder ``name`` of ``dir_fd``; True when removed, False when it is not there,
    not empty, or not a folder."""
    try:
        os.rmdir(check_name(name), dir_fd=dir_fd)
    except OSError:
        return False
    return True


def read_file_at(dir_fd: int, name: str, limit: int = 64 * 1024 * 1024) -> bytes | None:
    """The bytes (at most ``limit``) of the regular file ``name`` in ``dir_fd``, opened without following
    a symlink; None when absent. Raises :class:`PathNotAllowed` for a symlink or special file."""
    fd = open_existing(dir_fd, name, READ_FLAGS)
    if fd is None:
        return None
    with os.fdopen(fd, "rb") as fh:
        return fh.read(limit)


#: errno values with which a file system says it cannot fsync a folder (not that the fsync failed):
#: EINVAL (some FUSE and network file systems), ENOTSUP / EOPNOTSUPP, EROFS (read-only, nothing to flush).
FSYNC_UNSUPPORTED = frozenset({errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EROFS})


def fsync_fd(fd: int) -> None:
    """fsync a descriptor (a folder: so a rename in it survives a crash).

    A no-op where the file system does not support it (:data:`FSYNC_UNSUPPORTED`); any other
    :class:`OSError` (EIO, ENOSPC) is raised, so that nothing is recorded durable that is not.
    """
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in FSYNC_UNSUPPORTED:
            raise
