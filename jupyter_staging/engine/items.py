"""Staging the items of a job: chunk bookkeeping and the transfer of one file (copy, download, link).

:class:`ItemStager` is the base of :class:`~jupyter_staging.engine.runner.JobRunner`: it holds the run's
state (its :class:`~jupyter_staging.engine.host.JobHost`, control, live progress and resume data) and
brings one :class:`~jupyter_staging.sources.base.SourceItem` to a published, verified chunk.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jupyter_staging.destinations.base import Destination
from jupyter_staging.engine.executors import run_bounded
from jupyter_staging.engine.freshness import every_listed_item
from jupyter_staging.engine.host import JobHost
from jupyter_staging.engine.links import LinkingWriter
from jupyter_staging.engine.models import DONE_STATES, PENDING, READY
from jupyter_staging.engine.parts import PartOwnership, owner_tag
from jupyter_staging.engine.progress import ChunkBatch, ChunkLedger, LiveProgress
from jupyter_staging.engine.records import dump_item, load_item
from jupyter_staging.engine.refresh import keeps_part_files
from jupyter_staging.engine.resumebook import ResumeBook
from jupyter_staging.engine.schema import ChunkRow, JobChunk
from jupyter_staging.engine.staged import StagedIndex
from jupyter_staging.engine.store import JobRecord
from jupyter_staging.errors import (
    JobInterrupted,
    as_staging_error,
)
from jupyter_staging.safety.checksums import second_algorithm
from jupyter_staging.safety.control import JobControl
from jupyter_staging.safety.copying import file_digest
from jupyter_staging.safety.partfile import PartFile, part_path
from jupyter_staging.sources.base import Source, SourceItem


def _add_folders(folders: set[str], rel: str) -> None:
    """Add every folder above output path ``rel`` (``a/b/c.fits``: ``a/b``, ``a``) to ``folders``."""
    parent = rel.rpartition("/")[0]
    while parent and parent not in folders:
        folders.add(parent)
        parent = parent.rpartition("/")[0]


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes (:func:`~jupyter_staging.safety.copying.file_digest`: one reused
    buffer per thread, no copy of a block)."""
    return file_digest(path, "sha256")


class ItemStager(LinkingWriter, PartOwnership, ResumeBook):
    """Runs job ``job_id`` of ``host``: the state of one run and the staging of single items."""

    def __init__(self, host: JobHost, job_id: str) -> None:
        self.host = host
        self.store = host.store
        self.job_id = job_id
        self.live = LiveProgress()
        self.control = JobControl(on_bytes=self._on_bytes, on_rows=self._on_rows, log=self._log)
        self.recovering = False
        #: The job's sealed source (presigned URLs) as this run read it (a submit may seal a new one).
        self.sealed_at_start: str | None = None
        #: Queued again (a source presigned again while it ran): the runner submits the job's next run.
        self.requeued = False
        #: When the job first started (ns since the epoch; its first run's, kept by every resumed run):
        #: a Parquet part older than this is not the job's (:func:`.parts.published_since`).
        self.started_ns = time.time_ns()
        #: Engine bookkeeping persisted in ``JobRecord.resume``; guarded by ``_lock`` (entries run in
        #: parallel), as is the allocation of chunk indices.
        self.resume: dict[str, Any] = {}
        self._lock = threading.RLock()
        self.dest: Destination
        #: The folder whose output this job replaces when it completes (a swap), if any.
        self.replaced_folder: Path | None = None
        self._previous: dict[str, dict[str, Any]] | None = None
        #: Verified outputs of this server's earlier jobs, found by sha256 or source fingerprint.
        self.staged = StagedIndex(host, job_id)
        #: The job's chunk records in memory (loaded once per run), written in batches.
        self.ledger = ChunkLedger()
        #: The job's chunk records as this run found them (:meth:`_load_ledger`).
        self._chunks_at_start: list[JobChunk] = []
        #: Items of this job staged at once, across all of its manifest entries.
        self._item_slots = threading.BoundedSemaphore(max(1, int(host.concurrent_items)))
        #: Files this run found complete from the previous run (logged as one line per transfer).
        self._recovered_files = 0
        self._recovered_lock = threading.Lock()  # not _lock: a flush holds that while it writes
        self._init_resume_book()
        #: Every folder (relative to the destination) holding a chunk this job recorded or made: made from
        #: the chunks found at the start by the first :meth:`_new_chunk` or :meth:`_holds_chunks` (after
        #: the run has its destination), then kept by :meth:`_new_chunk`. None until then.
        self._chunk_folders: set[str] | None = None

    # -- callbacks from sources and converters ------------------------------------------------------

    def _on_bytes(self, n: int) -> None:
        with self.live.lock:
            self.live.bytes_done += n
        if self.ledger.due():  # ready marks of finished items wait while a long one runs
            self._flush_chunks()
        self.host.report_progress(self.job_id)

    def _on_rows(self, n: int) -> None:
        with self.live.lock:
            self.live.rows_done += n
        self.host.report_progress(self.job_id)

    # -- bookkeeping ----------------------------------------------------------------------------------

    def _relist(self, item: SourceItem, seen: dict[str, Any]) -> None:
        """``item`` changed since it was listed: from now on it has fingerprint ``seen``, in memory and in
        the resume data. The resume data goes out with the next write of chunk records, in the same
        transaction, and always before (or with) this item's chunk marked ready (:meth:`_flush_chunks`),
        so that a later job finds its digest under the fingerprint of the bytes it was taken of, never
        under the listed one; a folder whose files all changed costs one write per batch, not one per
        file."""
        with self._lock:
            item.validator, item.size = dict(seen), int(seen["size"])
            for listed in every_listed_item(self.resume):
                if listed.get("name") == item.name:
                    listed["validator"], listed["size"] = dict(seen), int(seen["size"])
            self._resume_dirty = True

    def _dump_item(self, item: SourceItem) -> dict[str, Any]:
        """``item`` as JSON for the database (:func:`~jupyter_staging.engine.records.dump_item`)."""
        return dump_item(item, self.host.secrets)

    def _load_item(self, data: dict[str, Any], current: str | None = None) -> SourceItem:
        """The item stored by :meth:`_dump_item`; ``current``: its source's URI as the job holds it now
        (:func:`~jupyter_staging.engine.records.load_item`)."""
        return load_item(data, self.host.secrets, current)

    def _load_ledger(self) -> list[JobChunk]:
        """Read the job's chunk records once at the start of a run (the ledger then counts in memory);
        rows of done chunks become the live row count. Returns the records in index order: none, unread,
        on a job's first run (``recovering`` False: its chunks are written after the resume data that
        counts the run)."""
        chunks: list[JobChunk] = [*self.store.list_chunks(self.job_id)] if self.recovering else []
        done = [c for c in chunks if c.state in DONE_STATES]
        self.ledger.load([c.index for c in chunks], len(done))
        with self.live.lock:
            self.live.bytes_done = 0
            self.live.rows_done = sum(c.rows or 0 for c in done)
        return chunks

    def _new_chunk(self, *, index: int | None = None, **fields: Any) -> JobChunk:
        """A new chunk record at ``index`` or the next free index, written with the next batch."""
        with self._lock:
            _add_folders(self._folders_of_chunks(), self.dest.relative(str(fields["path"])))
        return ChunkRow(**self.ledger.add(self.job_id, fields, index))

    def _holds_chunks(self, folder: str) -> bool:
        """True when ``folder`` (relative to the destination) holds, at any depth, a chunk this job recorded
        (found at the run's start) or made since: a table's folder that holds none needs no read of the
        job's chunk records (O(1), where the read is O(chunks) once per table)."""
        with self._lock:
            return folder in self._folders_of_chunks()

    def _chunks_under(self, folder: str) -> list[tuple[str, JobChunk]]:
        """``(output path, chunk)`` of the job's chunk records below ``folder`` (relative to the
        destination), read by prefix: the rows of that folder, not the job's every chunk. A pending chunk
        records its path as named, a published one where the destination put it: both forms are read."""
        relative = self.dest.relative
        prefixes = sorted({f"{folder}/", self.dest.chunk_path(f"{folder}/")})
        return [
            (rel, chunk)
            for chunk in self.store.list_chunks(self.job_id, under=prefixes)
            if (rel := relative(chunk.path)).startswith(f"{folder}/")  # LIKE may ignore case: again
        ]

    def _chunks_named(self, name: str) -> list[JobChunk]:
        """The chunk records of output ``name`` (a file staged as it is), read by path in both forms (see
        :meth:`_chunks_under`): O(1) rows, not the job's every chunk once per table."""
        named = sorted({name, self.dest.chunk_path(name)})
        return [
            c for c in self.store.list_chunks(self.job_id, paths=named) if self.dest.relative(c.path) == name
        ]

    def _folders_of_chunks(self) -> set[str]:
        """:attr:`_chunk_folders`, made from the chunks found at the run's start the first time (the
        destination is known by then). Called holding ``_lock``."""
        if self._chunk_folders is None:
            self._chunk_folders = set()
            for chunk in self._chunks_at_start:
                _add_folders(self._chunk_folders, self.dest.relative(chunk.path))
        return self._chunk_folders

    def _note_published(self, fields: dict[str, Any]) -> None:
        """Add to ``fields`` (of a chunk marked ready) the ``mtime_ns`` of the local file it names (one
        ``lstat``), recorded with the chunk (:attr:`~jupyter_staging.engine.schema.ChunkRecord.mtime_ns`):
        a file the user edits later, while the job still runs or after a restart, is then not taken for
        the job's. Not for a link whose bytes were not read (``sha256`` None: its time is its source's)
        nor an object in a store."""
        path = fields.get("path")
        if self.dest.remote or path is None or ("sha256" in fields and fields["sha256"] is None):
            return
        try:
            fields["mtime_ns"] = os.lstat(self.dest.workdir / self.dest.relative(str(path))).st_mtime_ns
        except OSError:
            pass

    def _chunk_ready(self, chunk: JobChunk, **fields: Any) -> None:
        """Mark ``chunk`` ready now (one transaction with any records waiting) and announce the job."""
        self._note_published(fields)
        self.ledger.ready(chunk.id, {**fields, "state": READY})
        rec = self._flush_chunks(force=True, load_job=True)
        if rec is not None:
            self.host.announce(rec)

    def _chunk_done(
        self, chunk: JobChunk, *, folder: Path | None = None, synced: bool = False, **fields: Any
    ) -> None:
        """Mark ``chunk`` ready with the next batch (its bytes are durable already: fsynced, or a link
        whose folder the batch fsyncs first); ``folder`` (holding its new name) is fsynced before it.
        ``synced``: its name is durable already too (:meth:`ChunkLedger.ready`)."""
        self._note_published(fields)
        self.ledger.ready(chunk.id, {**fields, "state": READY}, folder=folder, synced=synced)
        if self.ledger.due():
            self._flush_chunks()

    def _flush_chunks(
        self,
        *,
        force: bool = False,
        load_job: bool = False,
        events: Sequence[tuple[str, str]] = (),
        **job_fields: Any,
    ) -> JobRecord | None:
        """Write what waits in the ledger when due (always with ``force``) in one transaction, with the
        job's ``chunks_done``, ``job_fields`` and the log lines ``events`` (``(level, message)``); folders
        holding new links are fsynced first. Returns the job as written with ``load_job``, else None (also
        when nothing was written)."""
        if not force and not self.ledger.due():
            return None
        # A due flush skips when another thread is writing (what waits goes with the next one). The job's
        # lock is held from taking the batch and the resume data's changes to the end of the write: a
        # ready mark never goes out before the change that speaks of its chunk, nor after a crash without it.
        if not self._lock.acquire(blocking=force):
            return None
        try:
            resume, taken = self._take_resume("resume" in job_fields)  # first: it may raise, taking nothing
            batch = self.ledger.take()
            if batch.empty and not job_fields and not events and not resume:
                return None
            try:
                rec = self._write_batch(batch, load_job=load_job, events=events, **resume, **job_fields)
            except BaseException:
                self._give_back_resume(taken, written=False)
                raise
            self._give_back_resume(taken, written=True)
        finally:
            self._lock.release()
        if not force:
            self.host.report_progress(self.job_id)
        return rec

    def _write_batch(
        self, batch: ChunkBatch, *, load_job: bool, events: Sequence[tuple[str, str]], **job_fields: Any
    ) -> JobRecord | None:
        """Write ``batch`` (taken from the ledger) and ``job_fields`` in one transaction, the folders of
        its new names fsynced first; on an error the batch is given back to the ledger (its ready marks
        dropped when a fsync failed)."""
        if batch.chunks_done is not None:
            job_fields["chunks_done"] = batch.chunks_done
        try:
            for folder in sorted(batch.folders):
                self._sync_folder(folder)
        except OSError:
            self.ledger.restore(batch, durable=False)
            raise
        try:
            return self.host.write_chunks(
                self.job_id,
                list(batch.new.values()),
                batch.updates,
                load_job=load_job,
                events=events,
                **job_fields,
            )
        except BaseException:
            self.ledger.restore(batch)
            raise

    # -- plain transfers ----------------------------------------------------------------------------

    def _transfer(self, source: Source, method: str, item: SourceItem, chunk: JobChunk) -> None:
        if chunk.state != PENDING:
            self.control.add_bytes(chunk.bytes or 0)
            return
        final = self.dest.workdir / item.name
        # A local output's name is made durable by the ledger's fsync of its folder, once per batch and
        # before the chunk is recorded ready; an uploaded one's local copy is scratch.
        local = not self.dest.remote
        size, sha = self._stage_file(
            source, method, item, final, recovering=self.recovering, sync_folder=not local
        )
        self._record_transfer(item, chunk, final, size, sha)

    def _record_transfer(
        self, item: SourceItem, chunk: JobChunk, final: Path, size: int, sha: str | None
    ) -> None:
        """Put the published ``final`` (``size`` bytes, ``sha`` hex) where the destination keeps it and mark
        ``chunk`` ready with the next batch (a local file's folder fsynced before it). ``sha`` is None for
        a link whose bytes were not read (links are made in local destinations only)."""
        local = not self.dest.remote
        if sha is None:
            path = self.dest.chunk_path(item.name)
        else:
            path = self.dest.put(
                final, item.name, size=size, sha256=sha, content_type=item.content_type, control=self.control
            )
        self._chunk_done(chunk, folder=final.parent if local else None, bytes=size, sha256=sha, path=path)

    def _transfer_all(self, source: Source, method: str, work: list[tuple[SourceItem, JobChunk]]) -> None:
        """Transfer ``(item, chunk)`` pairs, up to ``concurrent_items`` of the job at once
        (:func:`~jupyter_staging.engine.executors.run_bounded`: the first error stops the others)."""

        def one(pair: tuple[SourceItem, JobChunk]) -> None:
            self.control.check()
            self._transfer(source, method, *pair)
            self.host.report_progress(self.job_id)

        try:
            if method not in ("hardlink", "symlink"):
                run_bounded(one, work, self.host.concurrent_items, slots=self._item_slots)
            else:
                self._link_all(source, method, work)  # on this thread (engine/links.py)
        finally:
            self._log_recovered()

    def _count_recovered(self) -> None:
        """Count one file found complete (published, or linked) by the previous run: one log line for all
        of them (:meth:`_log_recovered`), not one each (a batch of 1,000 lines would push the line that
        says why the job was resumed out of the newest lines the panel shows)."""
        with self._recovered_lock:
            self._recovered_files += 1

    def _log_recovered(self) -> None:
        """Log how many files were found complete from the previous run since the last call, if any."""
        with self._recovered_lock:
            count, self._recovered_files = self._recovered_files, 0
        if count:
            self._log("info", f"{count} file(s) already complete from the previous run, kept as they are")

    def _stage_file(
        self,
        source: Source,
        method: str,
        item: SourceItem,
        final: Path,
        *,
        recovering: bool,
        sync_folder: bool = True,
    ) -> tuple[int, str | None]:
        """Bring one item to ``final``; returns ``(size_bytes, sha256_hex)``. Without ``sync_folder`` a
        copied file's folder is not fsynced here: the caller has it fsynced before recording the item."""
        done = self._stage_without_fetch(
            source, method, item, final, recovering=recovering, sync_folder=sync_folder
        )
        if done is not None:
            return done
        return self._fetch(source, item, final, sync_folder=sync_folder)

    def _fetch(self, source: Source, item: SourceItem, final: Path, *, sync_folder: bool) -> tuple[int, str]:
        """Read ``item``'s bytes from ``source`` into its part file (one stream, resuming the bytes this job
        wrote for this fingerprint), verify and publish as ``final``; returns ``(size_bytes, sha256_hex)``."""
        return self._commit_part(self._fetch_part(source, item, final), item, sync_folder=sync_folder)

    def _fetch_part(
        self, source: Source, item: SourceItem, final: Path, *, unnamed: bool = False
    ) -> PartFile:
        """Read ``item``'s bytes from ``source`` into its part file (see :meth:`_fetch`); returns the part,
        open and not yet published. On an error it is discarded (closed, kept for a resume, when the job
        is interrupted). With ``unnamed`` the part is an unnamed file where one can be made
        (:meth:`_open_unnamed_part`); it is tagged with no version, so the file is not looked at before it
        is opened (``fetch`` follows a version changed since the listing all the same, and the item is
        relisted)."""
        second = second_algorithm(self._expected_checksums(item))
        out = self._open_unnamed_part(final, second=second) if unnamed else None
        if out is None:
            if source.revalidate(item):
                # Changed since the listing: staged as it is now, its part file tagged and the item listed
                # with the fingerprint of these bytes (a part of the listed version is set aside).
                self._relist(item, item.validator)
            out = self._open_part(item, final, second=second)
        if out.offset:
            self._log("info", f"{item.name}: resuming at byte {out.offset}")
            self.control.add_bytes(out.offset)
        listed = dict(item.validator)
        out.on_restart = lambda thrown: self.control.add_bytes(-thrown)  # fetched again, counted again
        # Stated in the GET's headers (an S3 ETag's MD5, an Azure Content-MD5): hashed as the bytes come.
        out.second_for = lambda: second_algorithm(self._expected_checksums(item))
        try:
            source.fetch(item, out, self.control)
        except JobInterrupted:
            self._follow_version(item, listed, out)
            out.close()
            raise
        except BaseException as exc:
            if self._keeps_parts(exc):  # an expired URL: kept for the job, continued with a new URL
                self._follow_version(item, listed, out)
                out.close()
            else:
                out.discard()
            raise
        self._follow_version(item, listed, out)
        return out

    def _keeps_parts(self, exc: BaseException) -> bool:
        """Whether failure ``exc`` leaves the job's part files in place: an expired presigned URL of a job
        writing into a local folder (:func:`~jupyter_staging.engine.refresh.keeps_part_files`), so that a
        submit with the URL presigned again continues from them."""
        known = as_staging_error(exc) if isinstance(exc, Exception) else None
        dest: Destination | None = getattr(self, "dest", None)
        return known is not None and dest is not None and keeps_part_files(known.code, remote=dest.remote)

    def _follow_version(self, item: SourceItem, listed: dict[str, Any], out: PartFile) -> None:
        """When ``fetch`` switched ``item`` to another version than ``listed`` (an HTTP or S3 object
        replaced meanwhile, restarted from its first byte), list the item with that version and tag its
        part with it: a later job never finds these bytes under the listed fingerprint, and a paused
        part is never resumed with the listed version's bytes."""
        if item.validator != listed:
            self._relist(item, item.validator)
            if not out.unnamed:  # an unnamed part is never found again: nothing to tag
                self._tag_part(item, owner_tag(self.job_id, item.validator), out)

    def _commit_part(self, out: PartFile, item: SourceItem, *, sync_folder: bool) -> tuple[int, str]:
        """Verify the fetched part of ``item`` and publish it (:meth:`PartFile.commit`); returns
        ``(size_bytes, sha256_hex)``. A checksum the source stated only when the bytes came (a GET's
        headers) that is not the user's raises :class:`ChecksumMismatch`, the part discarded (closed and
        removed, as a commit that fails its verification leaves it)."""
        try:
            expected = self._expected_checksums(item)
        except BaseException:
            out.discard()
            raise
        return out.commit(item.size, checksums=expected or None, sync_folder=sync_folder)

    def _stage_without_fetch(
        self,
        source: Source,
        method: str,
        item: SourceItem,
        final: Path,
        *,
        recovering: bool,
        sync_folder: bool,
        make_folder: bool = True,
    ) -> tuple[int, str | None] | None:
        """What brings ``item`` to ``final`` without reading the source's bytes: a hard link or symlink
        (the previous run's found in place), finished by the previous run, reused unchanged output, a copy
        of bytes this server staged before. Returns ``(size_bytes, sha256_hex)`` (the sha256 None for a
        link whose bytes were not read), or None when the bytes must be fetched (its folder is made,
        unless ``make_folder`` is False: a caller that opens its part file next, which makes it)."""
        if method in ("hardlink", "symlink"):
            return self._link(source, method, item, final)  # its folder is made by the link
        if recovering:
            self._drop_published_part(final)
        if (recovering or self.dest.remote) and final.exists() and not part_path(final).exists():
            # Published by this job just before it stopped, before the chunk was recorded: tagged as the
            # job's, for these bytes. An object-store job's work folder is its own private scratch folder:
            # whatever is published there is ours. Anything else is left to fail destination_exists.
            size = None if self.dest.remote else item.size
            found = self._published_before_the_stop(final, size=size) or self._reused_before_the_stop(
                item, final
            )
            if found is not None:
                self._count_recovered()
                self.control.add_bytes(found[0])
                return found
        reused = self._reuse_output(item, final)
        if reused is None and source.local_path(item) is None:
            reused = self._copy_staged(item, final, sync_folder=sync_folder)
        if reused is None and make_folder:
            self._make_folder(final)
        return reused
