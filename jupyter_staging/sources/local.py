"""Local files and folders (the site's shared storage): ``copy``, ``hardlink`` and ``symlink``."""

from __future__ import annotations

import errno
import mimetypes
import os
import stat
from pathlib import Path

from jupyter_staging.errors import SourceChanged, SourceNotFound
from jupyter_staging.safety.control import JobControl
from jupyter_staging.safety.copying import copy_file
from jupyter_staging.safety.partfile import PartFile
from jupyter_staging.safety.paths import resolve_source
from jupyter_staging.sources.base import RangeOut, Source, SourceItem, check_range

#: Bytes one ``copy_file_range`` / ``pread`` call of a ranged fetch moves (between two control checks).
RANGE_STEP = 16 * 1024**2
#: ``copy_file_range`` errors meaning "not between these two files": read and write instead.
NO_COPY_RANGE = frozenset({errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP})


def fingerprint(st: os.stat_result) -> dict[str, int]:
    """The fingerprint of a local file (DESIGN.md, "Re-running a notebook"): ``{"size": bytes,
    "mtime_ns": modification time in ns, "inode": inode number}`` from its ``stat``."""
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "inode": st.st_ino}


class LocalSource(Source):
    """A file, or a folder copied recursively (hidden entries and symlinks leaving the folder skipped).

    Raises :class:`~jupyter_staging.errors.PathNotAllowed` / :class:`SourceNotFound` at construction when
    the path is outside ``source_roots`` or missing.
    """

    default_method = "copy"
    methods = ("copy", "hardlink", "symlink")

    def __init__(self, uri: str, *, source_roots: list[str] | None = None) -> None:
        super().__init__(uri)
        self.roots = source_roots
        self.path = resolve_source(uri, source_roots)

    def list_items(self) -> list[SourceItem]:
        """The file, or the folder's files in walk order (a folder's files by name, then its folders by
        name, recursively; hidden entries skipped, folder symlinks never followed, a file symlink kept
        only when it resolves inside the source roots — or inside the folder when none are set).

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
            if entry.name.startswith("."):
                continue
            rel = prefix + entry.name
            try:
                is_dir = entry.is_dir()  # follows a symlink, as os.walk classifies entries
            except OSError:
                is_dir = False
            if is_dir:
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
            content_type=mimetypes.guess_type(name)[0],
        )

    def changed(self, item: SourceItem) -> bool:
        """True when the file's size, mtime or inode differ from ``item.validator``."""
        current = fingerprint(os.stat(item.locator))
        return any(item.validator.get(k) != v for k, v in current.items())

    def fetch(self, item: SourceItem, out: PartFile, control: JobControl) -> None:
        """Copy the file into ``out`` from ``out.offset``; a partial copy of a file that changed since
        (size, mtime or inode) restarts from byte 0 and ``item.size`` / ``item.validator`` follow the
        file as it is now. A local file states no checksums (``item.checksums`` stays as given)."""
        if out.offset and (self.changed(item) or out.offset > (item.size or 0)):
            control.log("warning", f"{item.name}: source changed since the partial copy; restarting it")
            out.restart()
            fresh = self._item(Path(item.locator), item.name)
            item.size, item.validator = fresh.size, fresh.validator
        copy_file(item.locator, out, control)

    def supports_ranges(self, item: SourceItem) -> bool:
        """True for a file of known size: :meth:`fetch_range` copies any range of it."""
        return item.size is not None

    def fetch_range(self, item: SourceItem, start: int, length: int, fd: int, control: JobControl) -> int:
        """Copy bytes ``[start, start + length)`` of the file into the same offsets of ``fd`` with
        ``os.copy_file_range`` (in the kernel, :data:`RANGE_STEP` bytes per call), or ``pread`` /
        ``pwrite`` where the two files do not allow it. Returns the bytes written.

        Raises :class:`SourceChanged` when the file's size, mtime or inode differ from ``item.validator``
        before or after the copy, or it ends early; :class:`SourceNotFound` when it is gone;
        :class:`~jupyter_staging.errors.JobInterrupted` on pause or cancel; :class:`ValueError` for a
        range outside the item.
        """
        check_range(item, start, length)
        self._same_file(item)
        out = RangeOut(fd, start, length, control)
        with open(item.locator, "rb") as fh:
            src = fh.fileno()
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
                else:
                    n = out.write(os.pread(src, step, out.position))
                if n == 0:
                    raise SourceChanged(f"{item.name}: the file ended at byte {out.position}")
        self._same_file(item)
        return out.offset

    def _same_file(self, item: SourceItem) -> None:
        """Raise :class:`SourceChanged` / :class:`SourceNotFound` unless the file is the listed version."""
        try:
            changed = self.changed(item)
        except FileNotFoundError:
            raise SourceNotFound(f"{item.name}: the source file is gone") from None
        if changed:
            raise SourceChanged(f"{item.name}: the source file changed since it was listed")

    def local_path(self, item: SourceItem) -> Path | None:
        return Path(item.locator)
