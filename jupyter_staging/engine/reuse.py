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
import threading
from pathlib import Path
from typing import Any

from jupyter_staging.destinations.manifest import read_manifest
from jupyter_staging.engine.folders import DestinationWriter
from jupyter_staging.engine.freshness import (
    locator_identity,
    objects_as_recorded,
    output_as_staged,
    reusable_output,
)
from jupyter_staging.engine.host import JobHost
from jupyter_staging.engine.staged import StagedIndex
from jupyter_staging.errors import ChecksumMismatch, VerificationFailed
from jupyter_staging.safety.checksums import checksums_to_verify, second_algorithm
from jupyter_staging.safety.control import JobControl
from jupyter_staging.safety.copying import copy_file
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
        out = self.part_file(final, second=second_algorithm(sums))
        try:
            copy_file(path, out, self.control)
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
        try:
            src = (self.replaced_folder / rel).lstat()
        except OSError:
            return None
        if not os.path.samestat(st, src) or not output_as_staged(src, old):
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
        src = self.replaced_folder / rel
        if not reusable_output(src, old):
            return None  # gone, replaced, edited since, or of no recorded size: staged again from the source
        try:
            self._link_into(src, final, symbolic=False)
        except OSError:
            out = self.part_file(final)
            copy_file(src, out, self.control)
            size, digest = out.commit(old.get("size"), checksums={"sha256": old["sha256"]})
        else:
            size, digest = int(old["size"]), str(old["sha256"])
            self.control.add_bytes(size)
        return size, digest
