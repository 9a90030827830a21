"""File operations through directory descriptors, confined to a root the user cannot move.

The user's server writes into folders the user can change at any moment: a ``.part`` name or a whole
folder may be replaced by a symbolic link between two checks. Everything here works relative to a folder
descriptor instead of a path. The root (the server's ``root_dir``, trusted) is opened once, then every
folder below it one component at a time with ``O_RDONLY | O_DIRECTORY | O_NOFOLLOW``, so a symbolic link
(or a file) where a folder is expected is refused with :class:`PathNotAllowed` (``path_not_allowed``),
never followed. Files are created with ``O_CREAT | O_EXCL | O_NOFOLLOW`` relative to that descriptor,
given their final name with :func:`publish_at` and removed with :func:`unlink_at`.

Publishing without overwriting: :func:`publish_at` uses ``linkat(part, final)`` then ``unlinkat(part)``.
``linkat`` fails with ``EEXIST`` whatever is at ``final`` (a file, a folder, a dangling symlink) and does
not follow ``part`` if it is a symlink, in one system call, so the check and the publication cannot be
separated by another process (a ``stat`` then ``rename`` could: ``rename`` silently replaces a file made in
between). Only on file systems without hard links does it fall back to ``fstatat`` + ``renameat`` (its
window is documented there). The hub service does the same for users' areas
(:mod:`jupyter_staging.hub.fileops`).
"""

from __future__ import annotations

import errno
import functools
import os
import secrets
import stat
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath

from jupyter_staging.errors import DestinationExists, PathNotAllowed

#: Flags opening a folder below the root: never through a symlink.
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
#: Flags creating a part file: it must not exist and must not be a symlink.
CREATE_FLAGS = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
#: Flags opening an existing part file to resume it: never through a symlink.
RESUME_FLAGS = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC
#: Flags reading a file below the root: never through a symlink, never blocking on a FIFO.
READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK

#: errno values of ``linkat`` meaning "no hard links here": publish with ``renameat`` instead.
_NO_LINKS = {errno.EPERM, errno.EOPNOTSUPP, errno.ENOSYS, errno.EMLINK}


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


def open_root(root: Path) -> int:
    """A descriptor of the trusted ``root`` folder (symlinks above and at the root are the deployer's
    choice and followed). Raises :class:`PathNotAllowed` when it is not a folder, ``OSError`` else."""
    try:
        return os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except NotADirectoryError:
        raise PathNotAllowed(f"the root {str(root)!r} is not a folder") from None


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
) -> int:
    """A new descriptor of folder ``rel`` below the folder ``dir_fd``, reached one component at a time
    without following any symlink; missing folders are made with ``create``. The caller closes it.
    ``on_the_way(prefix, fd)`` is called with each folder reached before the last (its path relative to
    ``dir_fd``, and a descriptor it may duplicate but not close).

    Raises :class:`PathNotAllowed` (``path_not_allowed``) for ``..``, an absolute ``rel``, or a symlink
    or file on the way; :class:`FileNotFoundError` for a missing folder without ``create``."""
    parts = components(rel)
    fd = os.open(".", DIR_FLAGS, dir_fd=dir_fd)  # a descriptor of its own, closed independently
    try:
        for depth, part in enumerate(parts, start=1):
            try:
                child = open_dir(fd, part, create=create)
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


def open_folder(root: Path, rel: str | PurePosixPath, *, create: bool = False) -> int:
    """A descriptor of folder ``root / rel``, reached from ``root`` with :func:`open_below` (no symlink
    below ``root`` followed); missing folders are made with ``create``. The caller closes it.

    Raises :class:`PathNotAllowed` (``path_not_allowed``) for ``..``, an absolute ``rel``, or a symlink or
    file on the way; :class:`FileNotFoundError` for a missing folder without ``create``."""
    root_fd = open_root(root)
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
def folder_fd(root: Path, rel: str | PurePosixPath, *, create: bool = False) -> Iterator[int]:
    """:func:`open_folder` as a context manager that closes the descriptor."""
    with closing_fd(open_folder(root, rel, create=create)) as fd:
        yield fd


class FolderCache:
    """Descriptors of folders below one trusted ``root``, each reached once with :func:`open_below` (no
    symlink followed) and kept until :meth:`close` (a job run keeps one): later uses cost one ``dup``
    instead of a walk from the root. A folder of many files is thus opened once, not four times per file.

    A kept descriptor designates the folder it was opened on, wherever that folder is moved later; a
    symlink put in its place afterwards is never followed. Code that must know the folder is still at its
    path asks :meth:`in_place` (as publishing does), or re-walks with :meth:`walk` and compares inodes
    (:func:`same_inode`). At most ``limit`` folders are kept; beyond that each use walks from the root.
    Thread-safe."""

    def __init__(self, root: Path, *, limit: int = 256) -> None:
        self.root = root
        self._limit = limit
        self._lock = threading.Lock()
        self._root_fd: int | None = None
        self._kept: dict[str, int] = {}
        #: (device, inode) of each kept folder, as opened.
        self._ids: dict[str, tuple[int, int]] = {}

    def _root(self) -> int:
        with self._lock:
            if self._root_fd is None:
                self._root_fd = open_root(self.root)
            return self._root_fd

    def open(self, rel: str | PurePosixPath, *, create: bool = False) -> int:
        """A new descriptor (the caller closes it) of folder ``root / rel``: a ``dup`` of the kept one, else
        walked from the root (:func:`open_below`; the folders on the way are kept too) and kept. Raises
        like :func:`open_folder`."""
        parts = components(rel)
        key = "/".join(parts)
        with self._lock:
            kept = self._kept.get(key)
            if kept is not None:
                return os.dup(kept)
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
                self._ids[key] = _identity(fd)

    def lend(self, rel: str | PurePosixPath, *, create: bool = False) -> tuple[int, bool]:
        """A descriptor of folder ``root / rel`` (opened as :meth:`open` does) and whether it is lent:
        True for the kept descriptor itself, which the caller must not close (it stays open until
        :meth:`close`, the end of the run: no ``dup`` and ``close`` per file), False for a new one the
        caller closes (a folder beyond ``limit``). Raises like :meth:`open`."""
        key = "/".join(components(rel))
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
        parts = components(rel)
        if not parts:
            return _identity(fd) == _identity(self._root())
        root = self._root()
        key = "/".join(parts)
        with self._lock:
            known = self._ids.get(key) if self._kept.get(key) == fd else None
        want = known or _identity(fd)
        with self._lock:  # the kept descriptors stay open while they are used
            prefixes = ["/".join(parts[:depth]) for depth in range(1, len(parts))]
            if all(prefix in self._kept for prefix in prefixes):
                parents = [root, *(self._kept[prefix] for prefix in prefixes)]
                return _names_lead_to(parts, parents, [*(self._ids[p] for p in prefixes), want])
        try:
            with closing_fd(self.walk(rel)) as fresh:
                return same_inode(fresh, fd)
        except (PathNotAllowed, FileNotFoundError):
            return False

    def walk(self, rel: str | PurePosixPath) -> int:
        """A new descriptor of ``root / rel`` walked afresh from the root (never a kept one), to check
        that a folder is still where it was. Raises like :func:`open_folder` without ``create``."""
        return open_below(self._root(), rel)

    @contextmanager
    def folder(self, rel: str | PurePosixPath, *, create: bool = False) -> Iterator[int]:
        """:meth:`open` as a context manager that closes the descriptor it yields."""
        with closing_fd(self.open(rel, create=create)) as fd:
            yield fd

    def close(self) -> None:
        """Close every kept descriptor, once no thread uses the cache any more (the end of a run); it may
        be used again afterwards and then walks afresh."""
        with self._lock:
            kept, self._kept = list(self._kept.values()), {}
            self._ids = {}
            root, self._root_fd = self._root_fd, None
        for fd in [*kept, *([root] if root is not None else [])]:
            os.close(fd)


def _names_lead_to(parts: list[str], parents: list[int], expected: list[tuple[int, int]]) -> bool:
    """True when each of ``parts``, looked up without following a symlink in its parent's descriptor
    (``parents[i]``), is a folder with the (device, inode) ``expected[i]``."""
    for name, parent, want in zip(parts, parents, expected, strict=True):
        try:
            st = os.stat(check_name(name), dir_fd=parent, follow_symlinks=False)
        except (FileNotFoundError, NotADirectoryError):
            return False
        if not stat.S_ISDIR(st.st_mode) or (st.st_dev, st.st_ino) != want:
            return False
    return True


def same_inode(fd_a: int, fd_b: int) -> bool:
    """True when two descriptors are the same file or folder (device and inode)."""
    return _identity(fd_a) == _identity(fd_b)


def _identity(fd: int) -> tuple[int, int]:
    st = os.fstat(fd)
    return st.st_dev, st.st_ino


def lstat_at(dir_fd: int, name: str) -> os.stat_result | None:
    """``lstat`` of ``name`` in ``dir_fd`` (a symlink is described, not followed); None when absent."""
    try:
        return os.stat(check_name(name), dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def create_file(dir_fd: int, name: str, mode: int = 0o666) -> int:
    """Create ``name`` in ``dir_fd`` with ``O_CREAT | O_EXCL | O_NOFOLLOW`` (read-write, ``mode`` before
    the umask); returns its descriptor. Raises :class:`FileExistsError` when anything (a symlink too)
    already has that name."""
    return os.open(check_name(name), CREATE_FLAGS, mode, dir_fd=dir_fd)


def open_existing(dir_fd: int, name: str, flags: int = RESUME_FLAGS) -> int | None:
    """Open the regular file ``name`` in ``dir_fd`` with ``O_NOFOLLOW`` (default read-write, to resume a
    part file); None when absent. Raises :class:`PathNotAllowed` when it is a symlink or not a regular
    file."""
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
    return fd


def publish_at(src_dir_fd: int, part: str, dst_dir_fd: int, final: str, *, sync: bool = True) -> None:
    """Give ``part`` (in ``src_dir_fd``) the name ``final`` (in ``dst_dir_fd``), never replacing
    anything: ``linkat`` + ``unlinkat`` (race-free, see the module's docstring), then the destination
    folder is fsynced — unless ``sync`` is False: the caller then fsyncs that folder itself before it
    relies on the name surviving a crash (the engine does it once per batch of chunk records). Where the
    file system has no hard links, ``fstatat`` then ``renameat``: a file made at ``final`` between the
    two calls would be replaced (no ``RENAME_NOREPLACE`` from Python).

    Raises :class:`DestinationExists` when ``final`` exists (a symlink or folder included)."""
    check_name(part)
    check_name(final)
    try:
        os.link(part, final, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd, follow_symlinks=False)
    except FileExistsError:
        raise DestinationExists(f"{final} already exists in the destination; not overwritten") from None
    except OSError as err:
        if err.errno not in _NO_LINKS:
            raise
        if lstat_at(dst_dir_fd, final) is not None:
            raise DestinationExists(f"{final} already exists in the destination; not overwritten") from None
        os.rename(part, final, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd)
    else:
        os.unlink(part, dir_fd=src_dir_fd)
    if sync:
        fsync_fd(dst_dir_fd)


#: Where a descriptor can be named again by path (Linux's procfs): an unnamed file is linked into its
#: folder, and re-opened, through ``/proc/self/fd/<n>`` (open(2), "O_TMPFILE"); ``linkat`` with
#: ``AT_EMPTY_PATH`` would need a capability.
PROC_FD = "/proc/self/fd"

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
    be named then). Raises ``OSError`` for any other failure (ENOSPC, EACCES)."""
    if _unnamed_refused or not _procfs():
        return None
    try:
        return os.open(".", os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, mode, dir_fd=dir_fd)
    except OSError as err:
        if err.errno in _NO_TMPFILE:
            return None
        raise


def reopen_unnamed(fd: int, flags: int = os.O_RDONLY | os.O_CLOEXEC) -> int:
    """A second descriptor (read-only by default) on the file open as ``fd``, named or not, through
    :data:`PROC_FD`. Raises ``OSError``."""
    return os.open(f"{PROC_FD}/{fd}", flags)


#: errno values of the link through procfs meaning "this system does not name unnamed files that way" (a
#: sandbox or a hardened procfs): the file is copied to a named part instead, and no more are made unnamed.
_NO_PROC_LINK = {errno.ENOENT, errno.EACCES, errno.EPERM, errno.EXDEV, errno.ELOOP}
#: Set once linking an unnamed file was refused in this process: :func:`create_unnamed` then makes none.
_unnamed_refused = False


def publish_fd_at(fd: int, dst_dir_fd: int, final: str, *, sync: bool = True) -> None:
    """Give the unnamed file open as ``fd`` (made with ``O_TMPFILE``) the name ``final`` in
    ``dst_dir_fd``, never replacing anything: ``linkat`` of ``/proc/self/fd/<fd>`` with
    ``AT_SYMLINK_FOLLOW`` (open(2), "O_TMPFILE"), which fails with ``EEXIST`` whatever is at ``final``; then
    the folder is fsynced unless ``sync`` is False (as :func:`publish_at`).

    Where the system refuses that link (:data:`_NO_PROC_LINK`), the bytes are copied to a new file
    ``<final>.<8 hex>.part`` in the same folder, fsynced and published with :func:`publish_at` (that file
    removed on any failure), and no later file of this process is made unnamed.

    Raises :class:`DestinationExists` when ``final`` exists; ``OSError`` else."""
    global _unnamed_refused
    check_name(final)
    try:
        os.link(f"{PROC_FD}/{fd}", final, dst_dir_fd=dst_dir_fd, follow_symlinks=True)
    except FileExistsError:
        raise DestinationExists(f"{final} already exists in the destination; not overwritten") from None
    except OSError as err:
        if err.errno not in _NO_PROC_LINK:
            raise
        _unnamed_refused = True
        _publish_copy(fd, dst_dir_fd, final)
    if sync:
        fsync_fd(dst_dir_fd)


def _publish_copy(fd: int, dir_fd: int, final: str) -> None:
    """Copy the whole file open as ``fd`` to a new file of ``dir_fd`` with a name of its own
    (``<final>.<8 hex>.part``, ``O_EXCL``: nothing of anyone else is touched), fsync it and publish it as
    ``final`` (not fsyncing the folder). Raises :class:`DestinationExists` or ``OSError``; that file is
    removed on failure."""
    part = check_name(f"{final}.{secrets.token_hex(4)}.part")
    out = create_file(dir_fd, part)
    try:
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
        finally:
            os.close(out)
        publish_at(dir_fd, part, dir_fd, final, sync=False)
    except BaseException:
        unlink_at(dir_fd, part)
        raise


def rename_at(dir_fd: int, name: str, new_name: str) -> None:
    """Rename entry ``name`` of ``dir_fd`` to ``new_name`` in the same folder (a symlink is renamed
    itself, never its target); an entry at ``new_name`` is removed first (never a folder)."""
    unlink_at(dir_fd, new_name)
    os.rename(check_name(name), check_name(new_name), src_dir_fd=dir_fd, dst_dir_fd=dir_fd)


def unlink_at(dir_fd: int, name: str) -> bool:
    """Remove the file or symlink ``name`` of ``dir_fd`` (a symlink is removed, never followed; a
    folder is left alone). Returns True when something was removed."""
    st = lstat_at(dir_fd, name)
    if st is None or stat.S_ISDIR(st.st_mode):
        return False
    try:
        os.unlink(name, dir_fd=dir_fd)
    except FileNotFoundError:
        return False
    return True


def mkdir_at(dir_fd: int, name: str, mode: int = 0o777) -> None:
    """Make folder ``name`` in ``dir_fd`` (``mode`` before the umask); an existing one is fine."""
    try:
        os.mkdir(check_name(name), mode, dir_fd=dir_fd)
    except FileExistsError:
        pass


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
