"""A folder below the server's root as a job's destination: files are written in place."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from jupyter_staging.destinations.base import Destination, remove_tree_if_empty, scratch_dir, within
from jupyter_staging.destinations.manifest import MANIFEST_NAME, read_manifest, write_manifest
from jupyter_staging.safety.control import JobControl
from jupyter_staging.safety.partfile import PART_SUFFIX, part_path


class LocalDestination(Destination):
    """A folder ``rel`` below ``root_dir`` (already validated by
    :func:`~jupyter_staging.safety.paths.resolve_destination`). Files are written in place."""

    def __init__(self, job_id: str, root_dir: Path, rel: str) -> None:
        super().__init__(job_id, root_dir / rel)
        self.root_dir = root_dir

    def put(
        self,
        local: Path,
        rel: str,
        *,
        size: int,
        sha256: str,
        content_type: str | None,
        control: JobControl,
    ) -> str:
        return rel

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        write_manifest(self.workdir, manifest)

    def read_manifest(self) -> dict[str, Any] | None:
        return read_manifest(self.workdir)

    def remove_chunk(self, chunk_path: str) -> bool:
        dest = self.workdir.resolve()
        path = dest / chunk_path
        if path.parent.resolve().is_relative_to(dest) and (path.is_file() or path.is_symlink()):
            path.unlink()
            return True
        return False

    def remove(
        self, chunk_paths: list[str], item_names: list[str], convert_dirs: list[str], *, keep_ready: bool
    ) -> int:
        """Only paths inside the destination folder are touched; a symlink is removed, never followed."""
        dest = self.workdir.resolve()
        if not within(dest, self.root_dir) or dest == self.root_dir:
            return 0
        removed = 0

        def unlink(path: Path) -> None:
            nonlocal removed
            if not within(path.parent.resolve(), dest):
                return
            try:
                if path.is_symlink() or path.is_file():
                    path.unlink()
                    removed += 1
            except FileNotFoundError:
                pass

        folders: set[Path] = set()
        for chunk_path in chunk_paths:
            path = dest / chunk_path
            folders.add(path.parent)
            unlink(part_path(path))
            if not keep_ready:
                unlink(path)
        for name in item_names:
            path = dest / name
            folders.add(path.parent)
            unlink(part_path(path))
        for out_dir in convert_dirs:
            folder = dest / out_dir
            folders.add(folder)
            if folder.is_dir() and not folder.is_symlink():
                for part in folder.glob(f"*{PART_SUFFIX}"):
                    unlink(part)
        scratch = scratch_dir(dest, self.job_id)
        if scratch.is_dir() and not scratch.is_symlink():
            shutil.rmtree(scratch, ignore_errors=True)
        if not keep_ready:
            manifest = read_manifest(dest) if (dest / MANIFEST_NAME).is_file() else None
            if manifest is not None and manifest.get("job_id") == self.job_id:
                unlink(dest / MANIFEST_NAME)
        for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):
            if within(folder.resolve(), dest):
                remove_tree_if_empty(folder, dest.parent)
        remove_tree_if_empty(dest, dest.parent)
        return removed
