"""Output staged before, instead of the source's bytes: the replaced output's unchanged files, and bytes this
server already staged and verified.

:class:`ReusingWriter` is a base of :class:`~jupyter_staging.engine.items.ItemStager` (DESIGN.md,
"Re-running a notebook"): an item whose fingerprint is the one the output being replaced was staged from is
hard-linked from that output (no byte moves); an item whose stated or expected sha256, or whose fingerprint,
matches a verified output of an earlier job is copied locally instead of fetched, and verified against the
recorded sha256 before it is published. It also gives the checksums an item's bytes must match.
"""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from jupyter_staging.destinations.manifest import read_manifest
from jupyter_staging.engine.folders import DestinationWriter
from jupyter_staging.engine.freshness import (
    locator_identity,
    objects_as_recorded,
    output_as_staged,
)
from jupyter_staging.engine.host import JobHost
from jupyter_staging.engine.staged import StagedIndex
from jupyter_staging.errors import ChecksumMismatch, PathNotAllowed, VerificationFailed
from jupyter_staging.safety.checksums import checksums_to_verify, second_algorithm
from jupyter_staging.safety.control import JobControl
from jupyter_staging.safety.copying import copy_from_fd
from jupyter_staging.safety.dirfd import READ_FLAGS, closing_fd, lstat_at, open_existing, open_folder
from jupyter_staging.sources.base import SourceItem


class ReusingWriter(DestinationWriter):
    """Reuse of earlier output for one run of job ``job_id`` (the state is set by
    :class:`~jupyter_staging.engine.items.ItemStager`)."""

    host: JobHost
    job_id: str
    control: JobControl
    #: Engine bookkeeping persisted in ``JobRecord.resume`` (guarded by ``_lock``).
    resume: dict[str, Any]
    _lock: threading.RLock
    #: The folder whose output this job replaces when it completes (a swap), if any.
    replaced_folder: Path | None
    _previous: dict[str, dict[str, Any]] | None
    #: Verified outputs of this server's earlier jobs, found by sha256 or source fingerprint.
    staged: StagedIndex

    def _log(self, level: str, message: str) -> None:
        """Add ``message`` to the job's log at ``level``."""
        self.host.log_event(self.job_id, level, message)

    def _expected_checksums(self, item: SourceItem) -> dict[str, str]:
        """``{algorithm: hex}`` the bytes of ``item`` must match: the checksum the user gave for the job's
        single file (or for its manifest entry's single file), and of what the source states the sha256,
        else the one other digest cheapest to verify (:func:`checksums_to_verify`: a stated CRC64NVME
        rather than an ETag's MD5). Raises :class:`ChecksumMismatch` when the user's checksum and the
        source's of the same algorithm differ."""
        sums = dict(item.checksums)
        request = self.resume.get("request") or {}
        if "entries" in self.resume:
            entry = item.name.split("/", 1)[0]
            given = (request.get("entry_checksums") or {}).get(entry)
            single = len(self.resume["entries"].get(entry, {}).get("items", [])) == 1
        else:
            given = request.get("checksum")
            single = len(self.resume.get("items", [])) == 1
        if given and single:
            algorithm, _, digest = given.partition(":")
            stated = sums.get(algorithm)
            if stated is not None and stated != digest:  # one of them is wrong: publish nothing
                raise ChecksumMismatch(
                    f"{item.name}: the source states {algorithm} {stated[:16]}..., "
                    f"the expected checksum is {digest[:16]}..."
                )
            sums[algorithm] = digest
            return checksums_to_verify(sums, given=algorithm)
        return checksums_to_verify(sums)

    def _copy_staged(self, item: SourceItem, final: Path, *, sync_folder: bool) -> tuple[int, str] | None:
        """Bytes this server already staged and verified, instead of the network: an output of an earlier
        job with the sha256 the source states (or the user expects), or from the same source with the same
        fingerprint. Copied with ``copy_file_range`` and verified against the recorded sha256; a copy that
        no longer matches (edited since) is dropped and the item is fetched. Returns ``(size, sha256)``."""
        sums = self._expected_checksums(item)
        found = self.staged.find(sums.get("sha256"), locator_identity(item.locator), item.validator)
        if found is None:
            return None
        path, size, digest = found
        if item.size is not None and size != item.size:
            return None
        try:  # never through a symlink, never waiting on a FIFO put at its name since it was looked at
            fd = os.open(path, READ_FLAGS)
        except OSError:
            return None
        with closing_fd(fd):
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_size != size:
                return None
            return self._copy_staged_fd(item, fd, final, sums, size, digest, sync_folder=sync_folder)

    def _copy_staged_fd(
        self,
        item: SourceItem,
        fd: int,
        final: Path,
        sums: dict[str, str],
        size: int,
        digest: str,
        *,
        sync_folder: bool,
    ) -> tuple[int, str] | None:
        """:meth:`_copy_staged` of the staged file open as ``fd`` (``size`` bytes, recorded ``digest``)."""
        out = self.part_file(final, second=second_algorithm(sums))
        try:
            copy_from_fd(fd, out, self.control)
            result = out.commit(size, checksums={**sums, "sha256": digest}, sync_folder=sync_folder)
        except VerificationFailed:
            self.control.add_bytes(-size)
            return None
        except BaseException:
            out.discard()
            raise
        self._log(
            "info", f"{item.name}: the same bytes were already staged here; copied locally, not downloaded"
        )
        return result

    def _previous_objects(self) -> dict[str, dict[str, Any]]:
        """The objects of the output this job replaces (``{relative path: manifest object}``), when the
        job may reuse them; empty otherwise. Made once; read without the job's lock after that (a flush
        holds it while it writes: every file's look would wait for the database)."""
        previous = self._previous
        if previous is not None:
            return previous
        with self._lock:  # manifest entries run in parallel
            if self._previous is None:
                reuse = (self.resume.get("swap") or {}).get("reuse") or {}
                folder, root = self.replaced_folder, self.host.root_dir
                manifest = read_manifest(folder, root=root) if reuse and folder is not None else None
                objects = (  # those the manifest, a file the user may edit, states as the job recorded
                    objects_as_recorded(manifest, self.host.store.chunk_summaries(reuse["job"]))
                    if manifest and manifest.get("job_id") == reuse.get("job")
                    else {}
                )
                self._previous = {path: o for path, o in objects.items() if o.get("sha256")}
            return self._previous

    def _unchanged(self, item: SourceItem) -> bool:
        """True when ``item``'s fingerprint is the one the replaced output was staged from."""
        reuse = (self.resume.get("swap") or {}).get("reuse") or {}
        fingerprint = (reuse.get("fingerprints") or {}).get(item.name)
        return bool(fingerprint) and fingerprint == item.validator

    def _reused_before_the_stop(
        self, item: SourceItem, final: Path, rel: str | None = None
    ) -> tuple[int, str] | None:
        """``(size_bytes, recorded sha256 hex)`` of the replaced output's file that ``final`` is a hard
        link to, made by an earlier run of this job (:meth:`_reuse_output`) that was stopped before
        recording it: ``final`` is the very inode of that file, still as it was staged, and ``item`` is
        unchanged. None otherwise. (Such a link carries the earlier job's published tag, not this job's.)
        ``rel``: the output's path (default ``item.name``; a Parquet part of the table ``item``)."""
        rel = rel or item.name
        old = self._previous_objects().get(rel)
        if old is None or self.replaced_folder is None or not self._unchanged(item):
            return None
        fd = self._open_by_folder(final)
        if fd is None:
            return None
        try:
            st = os.fstat(fd)
        finally:
            os.close(fd)
        with self._replaced_at(rel) as found:
            src = lstat_at(*found) if found is not None else None
        if src is None or not os.path.samestat(st, src) or not output_as_staged(src, old):
            return None
        return st.st_size, str(old["sha256"])

    def _reuse_output(self, item: SourceItem, final: Path, rel: str | None = None) -> tuple[int, str] | None:
        """Take output ``rel`` (default ``item.name``) of the replaced job when ``item`` is unchanged: a
        hard link to the verified file (no byte moves), or a local copy where links fail. Returns
        ``(size_bytes, sha256_hex)``, or None when there is nothing to reuse."""
        rel = rel or item.name
        old = self._previous_objects().get(rel)
        if old is None or self.replaced_folder is None or not self._unchanged(item):
            return None
        with self._replaced_at(rel) as found:
            if found is None or not self.reusable(found, old):
                return None  # gone, replaced, edited since, of no recorded size: staged from the source
            try:
                self._link_into(self.replaced_folder / rel, final, symbolic=False, src_at=found)
            except OSError:
                try:
                    fd = open_existing(*found, READ_FLAGS)
                except PathNotAllowed:  # replaced since it was looked at (a symlink, a FIFO)
                    return None
                if fd is None:
                    return None
                out = self.part_file(final)
                with closing_fd(fd):
                    copy_from_fd(fd, out, self.control)
                size, digest = out.commit(old.get("size"), checksums={"sha256": old["sha256"]})
            else:
                size, digest = int(old["size"]), str(old["sha256"])
                self.control.add_bytes(size)
        return size, digest

    @contextmanager
    def _replaced_at(self, rel: str) -> Iterator[tuple[int, str] | None]:
        """``(descriptor of its folder, its name)`` of output ``rel`` of the folder this job replaces, the
        folder reached from the root without following a symlink (closed on exit); None when it cannot be
        (missing, a symlink or a file on the way, not to be entered). Before, the path was followed: a
        folder of the old output that the user replaced by a symlink had a file outside the root, of the
        recorded size and time, hard-linked into the new output under the old file's sha256."""
        root = self.host.root_dir
        path = (self.replaced_folder or root) / rel
        try:
            fd = open_folder(root, path.parent.relative_to(root).as_posix(), writing=False)
        except (OSError, PathNotAllowed, ValueError):
            yield None
            return
        with closing_fd(fd):
            yield fd, path.name

    @staticmethod
    def reusable(found: tuple[int, str], obj: dict[str, Any]) -> bool:
        """Whether the replaced output's file ``found`` (:meth:`_replaced_at`, looked at by descriptor) may
        be taken as it is: a regular file of the recorded ``size`` (bytes) and ``mtime_ns`` that is still as
        the job left it (:func:`~jupyter_staging.engine.freshness.output_as_staged`: not edited in place
        since); not when it is gone, no regular file, of no recorded size, or changed. Nor when its time was
        never recorded (a job of release 0.1.0): an edit at the same size could not be told from the job's
        bytes, which would be linked into the new output under the source's sha256."""
        if obj.get("size") is None or obj.get("mtime_ns") is None:
            return False
        st = lstat_at(*found)
        return st is not None and stat.S_ISREG(st.st_mode) and output_as_staged(st, obj)

    def _reusable_part(self, rel: str, obj: dict[str, Any]) -> bool:
        """:meth:`reusable` for output ``rel`` of the folder this job replaces."""
        with self._replaced_at(rel) as found:
            return found is not None and self.reusable(found, obj)
