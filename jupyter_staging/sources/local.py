"""Local files and folders (the site's shared storage): ``copy``, ``hardlink`` and ``symlink``.

A listed item's locator is its resolved path (no symlink on it when it was listed, inside the source roots).
Its bytes are read, and it is hard-linked, through descriptors of its folders reached from ``/`` one
component at a time without following any symlink (:meth:`LocalSource.item_folder`): a folder on the way
replaced by a symlink after the listing (to somewhere outside the roots, say) makes the item fail with
``path_not_allowed`` instead of being followed (DESIGN.md, "Security rules": sources are confined to the
roots). The file itself is opened with ``O_NOFOLLOW`` and must be a regular file; what was opened is then
judged by its own fingerprint (``fstat``), never by a second look at the path.
"""

from __future__ import annotations

import errno
import os
import stat
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from jupyter_staging.errors import (
    PathNotAllowed,
    SourceChanged,
    SourceNotFound,
    TransferFailed,
    too_many_open_files_error,
)
from jupyter_staging.safety.control import JobControl
from jupyter_staging.safety.copying import block_buffer, copy_from_fd
from jupyter_staging.safety.dirfd import READ_FLAGS, check_name
from jupyter_staging.safety.partfile import PartFile
from jupyter_staging.safety.paths import hidden_part, resolve_source
from jupyter_staging.safety.sourcefolders import SourceFolders
from jupyter_staging.sources.base import RangeOut, Source, SourceItem, check_range, content_type_of

#: Bytes one ``copy_file_range`` / ``pread`` call of a ranged fetch moves (between two control checks).
RANGE_STEP = 16 * 1024**2
#: ``copy_file_range`` errors meaning "not between these two files": read and write instead.
NO_COPY_RANGE = frozenset({errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP})


def fingerprint(st: os.stat_result) -> dict[str, int]:
    """The fingerprint of a local file (DESIGN.md, "Re-running a notebook"): ``{"size": bytes,
    "mtime_ns": modification time in ns, "inode": inode number}`` from its ``stat``."""
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "inode": st.st_ino}


class LocalSource(Source):
    """A file, or a folder copied recursively (hidden entries, a Zarr store's metadata files excepted, and
    symlinks leaving the folder skipped).

    Raises :class:`~jupyter_staging.errors.PathNotAllowed` / :class:`SourceNotFound` at construction when
    the path is outside ``source_roots`` or missing.
    """

    default_method = "copy"
    methods = ("copy", "hardlink", "symlink")

    def __init__(self, uri: str, *, source_roots: list[str] | None = None) -> None:
        super().__init__(uri)
        self.roots = source_roots
        self.path = resolve_source(uri, source_roots)
        #: Descriptors of the folders items are read from, each walked to once from ``/``.
        self._folders = SourceFolders()
        weakref.finalize(self, self._folders.close)

    @contextmanager
    def item_folder(self, item: SourceItem) -> Iterator[tuple[int, str]]:
        """:meth:`open_folder` as a context manager: the descriptor is closed on exit."""
        fd, name = self.open_folder(item)
        try:
            yield fd, name
        finally:
            os.close(fd)

    def open_folder(self, item: SourceItem) -> tuple[int, str]:
        """``(O_PATH descriptor of item's folder, its file name)``, the folder reached from ``/`` without
        following a symlink (:class:`~jupyter_staging.safety.sourcefolders.SourceFolders`); the caller
        closes the descriptor. Items of the same folder (``os.path.dirname`` of their locators) may share
        it.

        Raises :class:`PathNotAllowed` (``path_not_allowed``) when a folder on the way is now a symlink or a
        file, or the locator is not an absolute path; :class:`SourceNotFound` when a folder is gone
        (``source_not_found``) or may not be searched (``permission_denied``, 403)."""
        folder, name = os.path.split(item.locator)
        name = check_name(name)
        try:
            fd = self._folders.open(folder)
        except PathNotAllowed:
            raise PathNotAllowed(
                f"{item.name}: a folder on its path is a symbolic link or a file since the listing; not read"
            ) from None
        except FileNotFoundError:
            raise SourceNotFound(f"{item.name}: the source file is gone") from None
        except OSError as exc:
            raise _read_error(item, exc) from None
        return fd, name

    def open_item(self, item: SourceItem) -> tuple[int, os.stat_result]:
        """``(read-only descriptor, its fstat)`` of the regular file ``item`` names, in the folder
        :meth:`item_folder` reaches, opened without following a symlink or blocking (a FIFO put there
        would hang an ``open``). The caller closes the descriptor.

        Raises :class:`PathNotAllowed` when the file or a folder on its path is now a symlink, or the file
        is no longer a regular one; :class:`SourceNotFound` when it is gone or may not be read."""
        with self.item_folder(item) as (folder, name):
            try:
                fd = os.open(name, READ_FLAGS | os.O_NOCTTY, dir_fd=folder)
            except FileNotFoundError:
                raise SourceNotFound(f"{item.name}: the source file is gone") from None
            except OSError as exc:
                raise _read_error(item, exc) from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise _not_regular(item)
        except BaseException:
            os.close(fd)
            raise
        return fd, st

    def revalidate(self, item: SourceItem) -> bool:
        """Look at the file ``item`` names as it is now (by descriptor, no symlink followed): when its
        fingerprint is not ``item.validator`` (rewritten or replaced since the listing), ``item.size`` and
        ``item.validator`` follow it and True is returned, before any of its bytes are staged. Raises like
        :meth:`open_item`."""
        with self.item_folder(item) as (folder, name):
            try:
                st = os.stat(name, dir_fd=folder, follow_symlinks=False)
            except FileNotFoundError:
                raise SourceNotFound(f"{item.name}: the source file is gone") from None
            except OSError as exc:
                raise _read_error(item, exc) from None
        if not stat.S_ISREG(st.st_mode):
            raise _not_regular(item)
        seen = fingerprint(st)
        if seen == item.validator:
            return False
        item.size, item.validator = st.st_size, seen
        return True

    def list_items(self) -> list[SourceItem]:
        """The file, or the folder's files in walk order (a folder's files by name, then its folders by
        name, recursively; hidden entries skipped but for a Zarr store's metadata files
        (:data:`~jupyter_staging.safety.paths.DATA_DOT_NAMES`), folder symlinks never followed, a file
        symlink kept only when it resolves inside the source roots — or inside the folder when none are
        set).

        The folder's confinement was checked once, at construction: below it, regular files are taken
        from ``os.scandir`` with their ``lstat`` (one system call each, no per-file ``realpath``); only
        symbolic links are resolved and checked (:func:`resolve_source`), as before. Raises
        :class:`SourceNotFound` when the source is neither a file nor a folder."""
        if self.path.is_file():
            return [self._item(self.path, self.path.name)]
        if not self.path.is_dir():
            raise SourceNotFound(f"source {self.uri!r} is neither a file nor a folder")
        items: list[SourceItem] = []
        stack = [(str(self.path), "")]
        while stack:
            folder, prefix = stack.pop()
            subfolders = self._list_folder(folder, prefix, items)
            stack.extend(reversed(subfolders))  # depth first, in name order, like os.walk
        return items

    def _list_folder(self, folder: str, prefix: str, items: list[SourceItem]) -> list[tuple[str, str]]:
        """Append the files of ``folder`` (relative name ``prefix``) to ``items``; returns its visible
        subfolders (not symlinks) as ``(path, relative name)``, by name. An unreadable folder is
        skipped, as ``os.walk`` does."""
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError:
            return []
        subfolders = []
        for entry in entries:
            if hidden_part(entry.name, last=True):
                continue
            rel = prefix + entry.name
            try:
                is_dir = entry.is_dir()  # follows a symlink, as os.walk classifies entries
            except OSError:
                is_dir = False
            if is_dir:
                if hidden_part(entry.name, last=False):  # a folder named like a Zarr metadata file
                    continue
                if not entry.is_symlink():
                    subfolders.append((entry.path, rel + "/"))
                continue
            item = self._link_item(entry.path, rel) if entry.is_symlink() else self._file_item(entry, rel)
            if item is not None:
                items.append(item)
        return subfolders

    def _file_item(self, entry: os.DirEntry[str], rel: str) -> SourceItem | None:
        """The item of a plain (not symlink) entry below the confined folder: a readable regular file."""
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            return None
        if not stat.S_ISREG(st.st_mode) or not os.access(entry.path, os.R_OK):
            return None
        return self._item_from_stat(entry.path, rel, st)

    def _link_item(self, path: str, rel: str) -> SourceItem | None:
        """The item of a symlink: its target when that is a regular file inside the source roots (the
        folder itself without roots); None otherwise (a link leaving them is skipped, never followed)."""
        try:
            resolved = resolve_source(path, self.roots or [str(self.path)])
        except Exception:  # noqa: BLE001 - a link leaving the roots is skipped, not followed
            return None
        return self._item(resolved, rel) if resolved.is_file() else None

    @classmethod
    def _item(cls, path: Path, name: str) -> SourceItem:
        return cls._item_from_stat(str(path), name, path.stat())

    @staticmethod
    def _item_from_stat(locator: str, name: str, st: os.stat_result) -> SourceItem:
        return SourceItem(
            name=name,
            size=st.st_size,
            locator=locator,
            validator=fingerprint(st),
            content_type=content_type_of(name),
        )

    def fetch(self, item: SourceItem, out: PartFile, control: JobControl) -> None:
        """Copy the file into ``out`` from ``out.offset``, read from the descriptor :meth:`open_item` gives.
        The caller calls :meth:`revalidate` before opening a named (resumable) ``out``, whose owner tag
        names the version; an unnamed one starts empty and is tagged with none. When the file opened is not
        the version ``item.validator`` names (replaced in between: an editor's atomic save), ``item.size``
        and ``item.validator`` follow it and a partial copy restarts from byte 0; the caller relists the
        item.
        A local file states no checksums (``item.checksums`` stays as given).

        Raises :class:`SourceChanged` when the file changes while it is copied (its fingerprint after the
        copy is not the one it was opened with); else like :meth:`open_item`, and
        :class:`~jupyter_staging.errors.JobInterrupted` on pause or cancel."""
        fd, st = self.open_item(item)
        try:
            seen = fingerprint(st)
            if seen != item.validator or out.offset > st.st_size:
                if out.offset:
                    control.log(
                        "warning", f"{item.name}: source changed since the partial copy; restarting it"
                    )
                    out.restart()
                item.size, item.validator = st.st_size, seen
            copy_from_fd(fd, out, control, size=st.st_size)  # the fstat below tells a file that grew
            if fingerprint(os.fstat(fd)) != seen:
                raise SourceChanged(f"{item.name}: the source file changed while it was copied")
        finally:
            os.close(fd)

    def supports_ranges(self, item: SourceItem) -> bool:
        """True for a file of known size: :meth:`fetch_range` copies any range of it."""
        return item.size is not None

    def fetch_range(self, item: SourceItem, start: int, length: int, fd: int, control: JobControl) -> int:
        """Copy bytes ``[start, start + length)`` of the file into the same offsets of ``fd`` with
        ``os.copy_file_range`` (in the kernel, :data:`RANGE_STEP` bytes per call), or ``pread`` /
        ``pwrite`` where the two files do not allow it. Returns the bytes written.

        Raises :class:`SourceChanged` when the file opened (:meth:`open_item`) has not the fingerprint
        ``item.validator`` before or after the copy, or it ends early; :class:`SourceNotFound` when it is
        gone; :class:`PathNotAllowed` as :meth:`open_item`;
        :class:`~jupyter_staging.errors.JobInterrupted` on pause or cancel; :class:`ValueError` for a
        range outside the item.
        """
        check_range(item, start, length)
        src, st = self.open_item(item)
        try:
            self._same_file(item, st)
            out = RangeOut(fd, start, length, control)
            kernel_copy = True
            while out.remaining:
                control.check()
                step = min(RANGE_STEP, out.remaining)
                if kernel_copy:
                    try:
                        n = os.copy_file_range(src, fd, step, out.position, out.position)
                    except OSError as exc:
                        if exc.errno not in NO_COPY_RANGE:
                            raise
                        kernel_copy = False
                        continue
                    out.offset += n
                    control.add_bytes(n)
                else:  # into this thread's reused block: a new 16 MiB block per read costs more CPU
                    view = block_buffer()[:step]
                    n = out.write(view[: os.preadv(src, [view], out.position)])
                if n == 0:
                    raise SourceChanged(f"{item.name}: the file ended at byte {out.position}")
            self._same_file(item, os.fstat(src))
        finally:
            os.close(src)
        return out.offset

    @staticmethod
    def _same_file(item: SourceItem, st: os.stat_result) -> None:
        """Raise :class:`SourceChanged` unless ``st`` (of the file opened) is of the listed version."""
        if fingerprint(st) != item.validator:
            raise SourceChanged(f"{item.name}: the source file changed since it was listed")

    def local_path(self, item: SourceItem) -> Path | None:
        return Path(item.locator)

    @contextmanager
    def reading_path(self, item: SourceItem) -> Iterator[Path | None]:
        """``/proc/self/fd/<folder>/<name>``: the file read through the descriptor of its folder
        (:meth:`item_folder`, kept open for the block), so a folder on the listed path swapped for a
        symlink is not followed (proc(5): the folder's entry is a link to the very folder opened); the
        name keeps its suffix, by which formats are told apart. The file must be a regular one when the
        block starts (:meth:`revalidate`'s look, which the caller makes first). Where ``/proc`` is not
        mounted, the listed path itself. Raises like :meth:`item_folder`."""
        with self.item_folder(item) as (folder, name):
            through = Path(f"/proc/self/fd/{folder}")
            yield through / name if through.is_dir() else Path(item.locator)


def _read_error(item: SourceItem, exc: OSError) -> PathNotAllowed | SourceNotFound | TransferFailed:
    """The staging error for ``exc``, met opening listed file ``item`` (or a folder on its path). Out of
    descriptors (``EMFILE`` / ``ENFILE``) is this server's state, not the source's: ``too_many_open_files``
    (503), naming the limit to raise."""
    no_descriptor = too_many_open_files_error(exc, item.name)
    if no_descriptor is not None:
        return no_descriptor
    if exc.errno == errno.ELOOP:
        return PathNotAllowed(f"{item.name}: became a symbolic link since it was listed; not read")
    if exc.errno in (errno.ENXIO, errno.ENOTDIR, errno.EISDIR, errno.ENODEV):
        return _not_regular(item)
    if exc.errno in (errno.EACCES, errno.EPERM):
        return SourceNotFound(f"{item.name}: permission denied", code="permission_denied", status=403)
    return SourceNotFound(f"{item.name}: cannot be read ({exc.strerror})", code="source_not_readable")


def _not_regular(item: SourceItem) -> PathNotAllowed:
    return PathNotAllowed(f"{item.name}: no longer a regular file since it was listed; not read")
