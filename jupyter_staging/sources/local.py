"""Local files and folders (the site's shared storage): ``copy``, ``hardlink`` and ``symlink``."""

from __future__ import annotations

import mimetypes
import os
from pathlib import Path

from jupyter_staging.errors import SourceNotFound
from jupyter_staging.safety.control import JobControl
from jupyter_staging.safety.partfile import PartFile, copy_file
from jupyter_staging.safety.paths import resolve_source
from jupyter_staging.sources.base import Source, SourceItem


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
        if self.path.is_file():
            return [self._item(self.path, self.path.name)]
        if not self.path.is_dir():
            raise SourceNotFound(f"source {self.uri!r} is neither a file nor a folder")
        items = []
        for folder, dirs, files in os.walk(self.path):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for fname in sorted(files):
                if fname.startswith("."):
                    continue
                full = Path(folder) / fname
                try:
                    resolved = resolve_source(str(full), self.roots or [str(self.path)])
                except Exception:  # noqa: S112 - a link leaving the roots is skipped, not followed
                    continue
                if resolved.is_file():
                    items.append(self._item(resolved, full.relative_to(self.path).as_posix()))
        return items

    @staticmethod
    def _item(path: Path, name: str) -> SourceItem:
        st = path.stat()
        return SourceItem(
            name=name,
            size=st.st_size,
            locator=str(path),
            validator={"size": st.st_size, "mtime_ns": st.st_mtime_ns, "inode": st.st_ino},
            content_type=mimetypes.guess_type(name)[0],
        )

    def changed(self, item: SourceItem) -> bool:
        """True when the file's size, mtime or inode differ from ``item.validator``."""
        st = os.stat(item.locator)
        current = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "inode": st.st_ino}
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
        copy_file(Path(item.locator), out, control)

    def local_path(self, item: SourceItem) -> Path | None:
        return Path(item.locator)
