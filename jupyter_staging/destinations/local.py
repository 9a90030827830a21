"""A folder below the server's root as a job's destination: files are written in place.

Every write and removal goes through directory descriptors opened from the server's root without following
a symlink (:mod:`jupyter_staging.safety.dirfd`): a folder swapped for a symlink while a job is queued or
paused is refused with ``path_not_allowed``, and nothing outside the root is written or removed.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import shutil
import stat
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from jupyter_staging.destinations.base import Destination, PublishedFile, scratch_dir
from jupyter_staging.destinations.manifest import MANIFEST_NAME, manifest_bytes, read_manifest_data
from jupyter_staging.errors import DestinationNotWritable, PathNotAllowed
from jupyter_staging.safety.control import JobControl
from jupyter_staging.safety.dirfd import (
    READ_FLAGS,
    closing_fd,
    components,
    folder_fd,
    lstat_at,
    open_below,
    open_existing,
    open_folder,
    read_file_at,
    rmdir_at,
    unlink_at,
)
from jupyter_staging.safety.ownership import part_of_job, taken_back
from jupyter_staging.safety.partfile import PartFile, part_path
from jupyter_staging.safety.publishing import unlink_checked, unlink_if_names

log = logging.getLogger(__name__)


class LocalDestination(Destination):
    """A folder ``rel`` below ``root_dir`` (already validated by
    :func:`~jupyter_staging.safety.paths.resolve_destination`). Files are written in place, by
    descriptor (:attr:`confinement_root` is ``root_dir``)."""

    def __init__(self, job_id: str, root_dir: Path, rel: str) -> None:
        super().__init__(job_id, root_dir / rel)
        self.root_dir = root_dir
        self.rel = rel
        self.confinement_root = root_dir

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

    def confined(self, *, create: bool = False) -> None:
        """Re-open the destination folder from the root, one component at a time with ``O_NOFOLLOW``
        (with ``create``, missing folders are made by descriptor; without, a missing folder is fine: it
        will be made so). Raises :class:`PathNotAllowed` (``path_not_allowed``) when a component is a
        symlink or a file."""
        try:
            fd = open_folder(self.root_dir, self.rel, create=create)
        except FileNotFoundError:
            return
        os.close(fd)

    def folder_present(self) -> bool:
        """Whether the destination folder is there now (reached from the root without a symlink; one found
        through a symlink counts as present: it is never removed, and :meth:`confined` refuses it)."""
        try:
            os.close(open_folder(self.root_dir, self.rel))
        except FileNotFoundError:
            return False
        except PathNotAllowed:
            return True
        return True

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        """Write ``manifest.json`` (``.part`` by descriptor, then ``linkat``; never overwrites). The part is
        the job's (tagged): a ``manifest.json.part`` of the user's in the way is set aside, never removed
        (said in the server's log)."""
        out = PartFile(self.workdir / MANIFEST_NAME, root=self.root_dir, owner=self.job_id)
        notice = out.set_aside_notice()
        if notice is not None:
            log.warning("staging job %s: %s", self.job_id, notice)
        try:
            out.write(manifest_bytes(manifest))
            out.commit()
        except BaseException:
            out.discard()
            raise

    def read_manifest_data(self) -> bytes | None:
        return read_manifest_data(self.workdir, root=self.root_dir)

    def remove_chunk(self, chunk_path: str, published: PublishedFile | None = None) -> bool:
        """Delete output file ``chunk_path`` (relative to the folder) by descriptor; a symlink is removed,
        never followed; with ``published``, a regular file of one name of another size or modification
        time stays (the user's, put over the job's or edited). Raises :class:`PathNotAllowed` when a folder
        on the way is a symlink, :class:`DestinationNotWritable` (409, nothing deleted) when its folder may
        not be written into (``EACCES``, ``EPERM``; ``EROFS``: a read-only mount)."""
        parts = components(chunk_path)
        if not parts:
            return False
        try:
            with folder_fd(self.root_dir, PurePosixPath(self.rel)) as fd:
                return bool(_unlink_below(fd, parts[:-1], parts[-1], published))
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise removal_refused(exc, repr(parts[-1])) from None

    def remove(
        self,
        chunk_paths: list[str],
        item_names: list[str],
        convert_dirs: list[str],
        *,
        keep_ready: bool,
        keep_folder: bool = False,
        parts_tagged: bool = False,
        unrecorded: Sequence[str] = (),
        chunk_files: Mapping[str, PublishedFile] | None = None,
    ) -> int:
        """Only entries inside the destination folder are touched, by descriptor from the root; a symlink
        is removed, never followed. A destination equal to the root, missing, or reached through a symlink
        is left alone (0). The folder itself is removed when left empty, unless ``keep_folder``. With
        ``parts_tagged`` a ``.part`` is removed only when it is this job's
        (:func:`~jupyter_staging.safety.ownership.part_of_job`): a file the user put at such a name stays.
        With ``chunk_files`` a regular file of one name at a chunk's name whose size is not the chunk's
        stays (the user's, put over the job's), and so does one whose modification time is not the one
        recorded: the chunk's, else the one this job's manifest recorded (edited in place at the same size:
        a FITS header updated). Raises :class:`DestinationNotWritable` (nothing more removed) when a folder
        may not be written into (``EACCES``, ``EPERM``, ``EROFS``)."""
        if not components(self.rel):
            return 0
        try:
            return self._remove(
                chunk_paths,
                item_names,
                convert_dirs,
                keep_ready=keep_ready,
                keep_folder=keep_folder,
                parts_tagged=parts_tagged,
                unrecorded=unrecorded,
                chunk_files=chunk_files,
            )
        except OSError as exc:
            raise removal_refused(exc, f"the output in {self.workdir.name!r}") from None

    def _remove(
        self,
        chunk_paths: list[str],
        item_names: list[str],
        convert_dirs: list[str],
        *,
        keep_ready: bool,
        keep_folder: bool,
        parts_tagged: bool,
        unrecorded: Sequence[str],
        chunk_files: Mapping[str, PublishedFile] | None,
    ) -> int:
        """The work of :meth:`remove` (its arguments) below a destination that is not the root."""
        try:
            dest_fd = open_folder(self.root_dir, self.rel)
        except (FileNotFoundError, PathNotAllowed):
            return 0
        try:
            removed = self._remove_below(
                dest_fd,
                chunk_paths,
                item_names,
                convert_dirs,
                keep_ready=keep_ready,
                parts_tagged=parts_tagged,
                chunk_files=chunk_files or {},
            )
            if not keep_ready:
                removed += sum(self._remove_if_published(dest_fd, rel) for rel in unrecorded)
        finally:
            os.close(dest_fd)
        if keep_folder:
            return removed
        parent, name = PurePosixPath(self.rel).parent, PurePosixPath(self.rel).name
        try:
            with folder_fd(self.root_dir, parent) as parent_fd:
                rmdir_at(parent_fd, name)
        except (FileNotFoundError, PathNotAllowed):
            pass
        return removed

    def _remove_below(
        self,
        dest_fd: int,
        chunk_paths: list[str],
        item_names: list[str],
        convert_dirs: list[str],
        *,
        keep_ready: bool,
        parts_tagged: bool,
        chunk_files: Mapping[str, PublishedFile],
    ) -> int:
        """The work of :meth:`remove` inside the open destination folder ``dest_fd``."""
        owner = self.job_id if parts_tagged else None
        manifest = self._own_manifest(dest_fd) if not keep_ready else None
        mtimes = _recorded_mtimes(manifest) if chunk_files else {}
        removed = 0
        folders: set[tuple[str, ...]] = set()
        for rel, keep in [(p, keep_ready) for p in chunk_paths] + [(n, True) for n in item_names]:
            parts = _parts(rel)
            if parts:
                folders.add(tuple(parts[:-1]))
                removed += _remove_parts_in(dest_fd, parts[:-1], owner, [part_path(Path(parts[-1])).name])
                if not keep:
                    published = chunk_files.get(rel)
                    if published is not None and published.mtime_ns is None and rel in mtimes:
                        published = published._replace(mtime_ns=mtimes[rel])
                    removed += _unlink_below(dest_fd, parts[:-1], parts[-1], published)
        for out_dir in convert_dirs:
            parts = _parts(out_dir)
            if parts:
                folders.add(tuple(parts))
                removed += _remove_parts_in(dest_fd, parts, owner)
        scratch = scratch_dir(Path(), self.job_id).name
        st = lstat_at(dest_fd, scratch)
        if st is not None and stat.S_ISDIR(st.st_mode):  # lstat: a symlink is not a folder
            shutil.rmtree(scratch, ignore_errors=True, dir_fd=dest_fd)  # type: ignore[call-arg]
        if manifest is not None:
            removed += _unlink_below(dest_fd, [], MANIFEST_NAME)
        for chain in sorted(folders, key=len, reverse=True):
            _rmdir_chain(dest_fd, list(chain))
        return removed

    def _remove_if_published(self, dest_fd: int, rel: str) -> int:
        """Remove the file ``rel`` below ``dest_fd`` (1) only when this job published it there: a regular
        file carrying the job's tag for that path and the bytes it holds (all read); else nothing (0)."""
        parts = _parts(rel)
        if not parts:
            return 0
        try:
            folder = open_below(dest_fd, PurePosixPath(*parts[:-1]))
        except (FileNotFoundError, PathNotAllowed):
            return 0
        with closing_fd(folder):
            try:
                fd = open_existing(folder, parts[-1], READ_FLAGS)
            except (PathNotAllowed, PermissionError):  # a symlink, a FIFO; unreadable: nothing tells
                return 0
            if fd is None:
                return 0
            with closing_fd(fd):
                if taken_back(fd, self.job_id, PurePosixPath(self.rel, *parts).as_posix()) is None:
                    return 0
                return int(unlink_if_names(folder, parts[-1], fd))

    def _own_manifest(self, dest_fd: int) -> dict[str, Any] | None:
        """The ``manifest.json`` in ``dest_fd`` (read by descriptor, never through a symlink) when it is a
        regular file this job wrote; None otherwise."""
        try:
            data = read_file_at(dest_fd, MANIFEST_NAME)
            manifest = json.loads(data) if data is not None else None
        except (PathNotAllowed, ValueError, OSError):
            return None
        return manifest if isinstance(manifest, dict) and manifest.get("job_id") == self.job_id else None


def removal_refused(exc: OSError, what: str) -> OSError | DestinationNotWritable:
    """The :class:`DestinationNotWritable` (409) for ``exc`` met deleting ``what`` (a file's name, or the
    output of a folder) when a folder may not be written into (``EACCES``, ``EPERM``; ``EROFS``: a read-only
    mount); ``exc`` itself otherwise. Before, an ack under ``delete_on_ack`` in such a folder answered 500
    ``internal_error``, and the TTL sweep stopped at such a job's output, every time, leaving the jobs after
    it unexpired. The message names no path."""
    if exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
        return exc
    return DestinationNotWritable(
        f"{what} could not be deleted: this server's user may not write into its folder "
        f"({exc.strerror or 'permission denied'}); it stays"
    )


def _recorded_mtimes(manifest: dict[str, Any] | None) -> dict[str, int]:
    """``{relative path: mtime_ns}`` of the files a job's ``manifest`` lists: the times of chunks recorded
    before migration 0007, which have none of their own (empty without a manifest: a job that did not
    succeed; a manifest of an earlier version has none)."""
    objects = (manifest or {}).get("objects") or []
    return {
        str(o["path"]): o["mtime_ns"]
        for o in objects
        if isinstance(o, dict) and "path" in o and isinstance(o.get("mtime_ns"), int)
    }


def _parts(rel: str) -> list[str]:
    """The components of a stored relative path, or ``[]`` when it is not one (then it is skipped)."""
    try:
        return components(rel)
    except PathNotAllowed:
        return []


def _unlink_below(dest_fd: int, folder: list[str], name: str, published: PublishedFile | None = None) -> int:
    """Remove ``folder/name`` below ``dest_fd`` (1) or nothing (0), by descriptor; with ``published``, a
    regular file of one name of another size, or (when recorded) another modification time, stays (0):
    changed since the job published it. The file so checked is the one removed
    (:func:`~jupyter_staging.safety.publishing.unlink_checked`): one renamed onto the name after the check
    stays."""
    try:
        fd = open_below(dest_fd, PurePosixPath(*folder))
    except (FileNotFoundError, PathNotAllowed):
        return 0
    try:
        if published is not None:
            st = lstat_at(fd, name)
            # One name only: a file with others is a link the job made (a re-run's reused output, whose
            # other name the user may have appended to), removed by name as before.
            if st is not None and stat.S_ISREG(st.st_mode) and st.st_nlink == 1:
                if st.st_size != published.size or published.mtime_ns not in (None, st.st_mtime_ns):
                    return 0
                return int(unlink_checked(fd, name, st))
        return int(unlink_at(fd, name))
    finally:
        os.close(fd)


#: The part files a conversion writes in a table's folder (``formats.parquet.PART_TEMPLATE`` + ``.part``).
_TABLE_PART = re.compile(r"part-[0-9]{5,}\.parquet\.part")


def _remove_parts_in(
    dest_fd: int, folder: list[str], owner: str | None, names: list[str] | None = None
) -> int:
    """Remove the part files ``names`` right in ``folder`` below ``dest_fd`` (default: those named as a
    conversion names its parts, :data:`_TABLE_PART`: a ``notes.part`` of the user's in a table's folder
    stays, even where nothing tells whose a file is); with ``owner`` (a job id) only those that are that
    job's. Returns how many."""
    try:
        fd = open_below(dest_fd, PurePosixPath(*folder))
    except (FileNotFoundError, PathNotAllowed):
        return 0
    try:
        if names is None:  # a table's folder: only names a conversion gives its part files
            names = [name for name in os.listdir(fd) if _TABLE_PART.fullmatch(name)]
        if owner is None:
            return sum(unlink_at(fd, name) for name in names)
        return sum(_remove_job_part(fd, name, owner) for name in names)
    finally:
        os.close(fd)


def _remove_job_part(dir_fd: int, name: str, job_id: str) -> bool:
    """Remove part file ``name`` of ``dir_fd`` when it is job ``job_id``'s (:func:`part_of_job`), and only
    that very file (:func:`unlink_if_names`); a symlink, another job's part or the user's file stays."""
    try:
        fd = open_existing(dir_fd, name, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except (PathNotAllowed, OSError):
        return False
    if fd is None:
        return False
    try:
        return part_of_job(fd, job_id) and unlink_if_names(dir_fd, name, fd)
    except OSError:
        return False
    finally:
        os.close(fd)


def _rmdir_chain(dest_fd: int, folder: list[str]) -> None:
    """Remove ``folder`` below ``dest_fd`` and its parents up to ``dest_fd`` while they are empty."""
    while folder:
        try:
            with_fd = open_below(dest_fd, PurePosixPath(*folder[:-1]))
        except (FileNotFoundError, PathNotAllowed):
            return
        try:
            if not rmdir_at(with_fd, folder[-1]):
                return
        finally:
            os.close(with_fd)
        folder = folder[:-1]
