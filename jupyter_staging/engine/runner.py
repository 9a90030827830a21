"""Running one staging job: list the source, stage each item as a chunk, convert tables, write the manifest.

A :class:`JobRunner` runs on an executor thread. Its life is a template, as jupyter-scheduler's
``ExecutionManager``: :meth:`~JobRunner.before_start` (checks and the ``running`` state),
:meth:`~JobRunner.run_items` (a single source, or the entries of a manifest), then
:meth:`~JobRunner.on_complete` (manifest written last, cleanup policy, ``succeeded``) or
:meth:`~JobRunner.on_failure` / :meth:`~JobRunner.on_interrupted`.

Every file is produced locally, complete and verified, in its destination's work folder, then handed to the
job's :class:`~jupyter_staging.destinations.base.Destination` (nothing more to do for a folder; an upload
for object storage). Each chunk is persisted as soon as it is published, so a job interrupted by a pause, a
shutdown or a crash continues from its finished chunks and from the bytes already in its ``.part`` files.
The runner reaches its manager only through :class:`~jupyter_staging.engine.host.JobHost`.
"""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path, PurePosixPath
from typing import Any

from jupyter_staging.destinations.manifest import read_manifest
from jupyter_staging.destinations.objectstore import ObjectStoreDestination
from jupyter_staging.engine.acks import expire_chunks, restore_chunks, unconsumed_paths
from jupyter_staging.engine.cleanup import MADE_DESTINATION, remove_job_output
from jupyter_staging.engine.collector import collector_paused
from jupyter_staging.engine.deadparts import FOREIGN_PARTS_LISTED
from jupyter_staging.engine.entries import error_of, raise_partial
from jupyter_staging.engine.failure import as_run_error, record_once_reachable
from jupyter_staging.engine.folders import PARTS_TAGGED, PUBLISHED_TAGS
from jupyter_staging.engine.manifesting import ManifestStager
from jupyter_staging.engine.models import DONE_STATES, LINK_METHODS, PENDING, JobState
from jupyter_staging.engine.placement import UNFINISHED_STATES
from jupyter_staging.engine.records import has_sealed, json_copy, without_sealed
from jupyter_staging.engine.refresh import requeue_refreshed
from jupyter_staging.engine.retention import expire_at_end
from jupyter_staging.engine.schema import JobChunk
from jupyter_staging.engine.staged import RECENT, job_entries
from jupyter_staging.engine.store import ChunkSummary, JobRecord, utcnow
from jupyter_staging.engine.swap import (
    Swapped,
    kept_before,
    kept_lines,
    nothing_moved,
    published_by,
    recorded_outputs,
    staged_inside,
    swap_in,
    swap_started,
    swapped_already,
    too_late,
)
from jupyter_staging.engine.transitions import JobEnded, StateChanged, found, held_by, in_state
from jupyter_staging.engine.units import format_bytes
from jupyter_staging.errors import ClusterUnavailable, JobInterrupted, as_staging_error
from jupyter_staging.safety.paths import check_output_name
from jupyter_staging.sources.base import SourceItem
from jupyter_staging.sources.registry import open_source

log = logging.getLogger(__name__)


class JobRunner(ManifestStager):
    """Runs job ``job_id`` of its :class:`~jupyter_staging.engine.host.JobHost` once (from queued to a
    final or paused state)."""

    def run(self) -> None:
        """Run the job; never raises (errors end the job ``failed`` with a code)."""
        try:
            rec = self.before_start()
            if rec is None:
                return
            # A link job builds its per-file records faster than anything else: the collector's full
            # passes, one every few thousand files, are held off until it ends (engine/collector.py).
            # Link jobs read no byte: their runs hold the collector off.
            bulk = collector_paused() if rec.method in LINK_METHODS else contextlib.nullcontext()
            with bulk:
                # No task counts once the job says paused, failed or succeeded.
                try:
                    names, failures = self.run_items(rec)
                except JobInterrupted:
                    self.close_tasks(forget_run=False)  # a resumed run may hold the run variable already
                    raise
                except BaseException:
                    self.close_tasks()
                    raise
                self.close_tasks()
                if not (failures and self._requeued(self._reopenable(rec, failures))):
                    self.on_complete(rec, entries=names, failures=failures)
        except JobInterrupted as stop:
            self.on_interrupted(stop.reason)
        except ClusterUnavailable as lost:  # a pause or cancel asked while the Dask scheduler hung stands
            if self.control.interrupted:
                self.on_interrupted(self.control.reason or "cancelled")
            else:
                self.on_failure(lost)
        except Exception as exc:  # every failure ends the job with a code, never a traceback
            self.on_failure(exc)
        finally:
            self.close_folders()
            self.host.release(self.job_id, self.control, self.live)
            if self.requeued:  # queued again for a source presigned again while it ran: the next run
                self.host.submit(self.job_id)

    # -- the template's steps -------------------------------------------------------------------------

    def before_start(self) -> JobRecord | None:
        """Take a queued job: honour a pause or cancel requested while it waited, else mark it
        ``running``. Returns its record, or None when there is nothing to run (not queued: another runner
        took it, or a verb ended it). Each change is made only if the job is still as read (queued, with
        the same request pending, this process its runner); else it is read again."""
        for _ in range(3):
            rec = self.store.get_job(self.job_id)
            if rec is None or rec.state != JobState.queued.value or rec.runner != self.host.runner_id:
                return None  # another server took it over (this process missed its lease)
            try:
                return self._take(rec)
            except StateChanged:  # a pause or cancel came in between: read the job again
                continue
        return None

    def _take(self, rec: JobRecord) -> JobRecord | None:
        """:meth:`before_start` for the queued job ``rec`` as read."""
        taken = held_by(self.host.runner_id, found(JobState.queued, rec.requested))
        if rec.requested and swap_started(rec.resume):  # stopped as its complete output was swapped in
            self.host.log_event(self.job_id, "info", too_late(rec.requested))
        elif rec.requested == JobState.paused.value:
            self.host.set_state(self.job_id, JobState.paused, requested=None, when=taken)
            return None
        elif rec.requested == JobState.cancelled.value:
            self.host.finish_cancelled(self.job_id, taken)
            return None
        self.host.attach_live(self.job_id, self.live)
        with self.live.lock:  # the first progress is written one interval in (a short job writes none)
            self.live.last_flush = time.monotonic()
            self.live.floor_bytes, self.live.floor_rows = rec.bytes_done or 0, rec.rows_done or 0
        # The run counts itself in the resume data as it takes the job: a run after one that did not
        # finish (a crash, a pause) is recovering, and finds the chunks and part files left.
        self.resume = dict(rec.resume or {})
        self.resume["attempts"] = int(self.resume.get("attempts", 0)) + 1
        self.recovering = self.resume["attempts"] > 1
        if not self.recovering:  # before anything is written: a folder that is there already is the user's
            self.resume[MADE_DESTINATION] = not self.host.destination_of(rec).folder_present()
            self.resume[PUBLISHED_TAGS] = True  # what it publishes is tagged: taken back after a crash by it
            self.resume[PARTS_TAGGED] = True  # its part files are tagged as it makes them: cleaned up by it
            if rec.convert:  # each table lists the part files of the user's in its folder as it starts
                self.resume[FOREIGN_PARTS_LISTED] = True
        started = rec.started_at or utcnow()
        self.started_ns = round(started.timestamp() * 1e6) * 1000  # what this job publishes is newer
        return self.host.set_state(
            self.job_id,
            JobState.running,
            events=[("info", "running")],
            resume=json_copy(self.resume),
            started_at=started,
            requested=None,
            when=taken,
        )

    def run_items(self, rec: JobRecord) -> tuple[list[str] | None, dict[str, dict[str, str]]]:
        """Stage every item of the job (a single source, or each entry of a manifest). Returns the
        manifest's entry names (None for a single source) and the errors of the entries that failed."""
        self.sealed_at_start = rec.sealed
        source_uri, entries = self.host.raw_sources(rec)
        self._chunks_at_start = self._load_ledger()
        self.dest = self.host.destination_of(rec)
        if self.resume.get("swap"):
            self.replaced_folder = self._swap_root() / rec.destination
            if self.recovering and swap_started(self.resume):
                finished = self._finish_swap(rec)
                if finished is not None:
                    return finished
                # Its manifest is gone from the folder: the run checks what the job staged there.
            if not self.resume["swap"].get("done"):
                self._log("info", f"staging into {self.resume['swap']['into']}; swapped in when complete")
        if isinstance(self.dest, ObjectStoreDestination):
            self.dest.make_workdir()
        else:
            # Confinement is re-checked at every start and resume: a destination folder swapped for a
            # symlink meanwhile fails the job with path_not_allowed before a byte is written.
            self.dest.confined(create=True)
        self.prepare_tasks(rec.method)
        try:
            if entries is not None:
                return self._run_manifest(rec, entries)
            self._run_source(rec, source_uri)
            return None, {}
        finally:
            self._log_recovered()  # files found complete outside a plain transfer (conversions, Dask)

    def on_interrupted(self, reason: str) -> None:
        """A pause, cancel or shutdown stopped the run between two blocks; a run ``superseded`` (another
        server took its job over) records nothing and cleans nothing up: the job is the other run's."""
        if reason == "superseded":
            return
        self._record_published()
        self.host.report_progress(self.job_id, force=True)
        if reason == "paused":
            self.host.finish_paused(self.job_id)
        elif reason == "cancelled":
            self.host.finish_cancelled(self.job_id, held_by(self.host.runner_id, in_state(JobState.running)))
        # "shutdown": stay running in the database; start() resumes the job in the next process.

    def on_failure(self, exc: Exception) -> None:
        """Remove the partial output (published chunks stay) and end the job ``failed`` with a code; while
        the job database cannot be reached, again until it answers (:func:`record_once_reachable`)."""
        error = as_run_error(exc)
        try:
            record_once_reachable(lambda: self._end_failed(error), self.control, self.job_id)
        except Exception:  # the database itself failed; nothing more we can record
            log.exception("could not record failure of job %s", self.job_id)

    def _end_failed(self, exc: Exception) -> None:
        """:meth:`on_failure`'s records (raises what the database raises)."""
        self._record_published()  # published chunks are kept: record them first
        self.host.report_progress(self.job_id, force=True)  # a job failing early wrote none yet
        known = as_staging_error(exc)
        if known is not None and self._requeued({"": known.code}):
            return
        rec = self.store.get_job(self.job_id)
        mine = rec is not None and rec.runner == self.host.runner_id
        if rec is not None and mine and self._keeps_parts(exc) and rec.cleanup_policy != "delete_always":
            # Recorded while the job holds the URL this run started with, else queued again with a new one
            self.host.fail(self.job_id, exc, when=lambda now: now.sealed == self.sealed_at_start)
            if known is not None and self._requeued({"": known.code}):
                return
            self._log("info", "the bytes received are kept: stage the URL presigned again to continue")
            return
        elif rec is not None and mine and not JobState(rec.state).is_final:  # else another run's output
            try:
                remove_job_output(self.host, rec, keep_ready=True)
            except Exception as cleanup:
                self._log("warning", f"could not remove partial output: {error_of(cleanup)['message']}")
        self.host.fail(self.job_id, exc)

    def _requeued(self, failed: dict[str, str]) -> bool:
        """Queue the job again when its items failed (``failed``: entry name, ``""`` for the source -> code)
        and a submit gave it a source presigned again since this run started (:func:`requeue_refreshed`,
        failed entries reopened, published chunks recorded first); :meth:`run` submits the next run."""

        def settle() -> None:
            self._reopen_entries([name for name in failed if name])
            self._record_published()
            self.host.report_progress(self.job_id, force=True)

        codes = list(failed.values())
        self.requeued = requeue_refreshed(self.host, self.job_id, self.sealed_at_start, codes, settle)
        return self.requeued

    def _record_published(self) -> None:
        """Record the chunks published and not yet written (a pause or a failure keeps them); a failure to
        do so (their folder's fsync failed: not recorded, staged again by the next run) is logged, and the
        job still ends as it must."""
        try:
            self._flush_chunks(force=True)
            self._settle_resume()  # written whole once more: its shown parts complete while it waits
        except Exception as exc:
            self._log("warning", f"published chunks not recorded: {error_of(exc)['message']}")

    def on_complete(
        self,
        rec: JobRecord,
        *,
        entries: list[str] | None = None,
        failures: dict[str, dict[str, str]] | None = None,
    ) -> None:
        """Write the manifest (last), apply the cleanup policy, end ``succeeded`` — or, when manifest
        entries failed, raise :class:`PartiallyStaged` (code ``partial``) after writing the manifest. A job
        that is no longer this run's (ended, or taken over by another server) is left as it is: raises
        :class:`JobInterrupted` (``superseded``) before its manifest and before its cleanup policy, and
        its end is recorded only if it is still running under this process."""
        if not self.host.still_held(self.job_id):
            raise JobInterrupted("superseded")
        failures = failures or {}
        self._flush_chunks(force=True)
        self._settle_resume()  # one row to read, its shown parts complete
        chunks = self.store.chunk_summaries(self.job_id)
        staged = [c for c in chunks if c.state in DONE_STATES]
        objects = self._manifest_objects(staged)
        self.dest.confined()  # before publishing the manifest (path_not_allowed if swapped meanwhile)
        self._write_manifest(rec, objects, entries, failures)
        totals = self._totals(rec, chunks, staged, failed=bool(failures))
        if isinstance(self.dest, ObjectStoreDestination):
            self.dest.remove_workdir_if_empty()
        total = sum(c.bytes or 0 for c in staged)
        if self.resume.get("swap"):
            self._swap_in(rec)
        if failures:
            assert entries is not None
            self.host.update_job(self.job_id, **totals)
            raise_partial(entries, failures, f"{len(staged)} chunk(s), {format_bytes(total)}")
        summary = f"{len(staged)} chunk(s), {format_bytes(total)}, {totals['rows_done']} rows"
        if not self.host.still_held(self.job_id):
            raise JobInterrupted("superseded")
        self.host.apply_cleanup_policy(self.job_id, JobState.succeeded, policy=rec.cleanup_policy)
        # This run's resume data is the newest: its sealed locators (presigned URLs), if any, are dropped
        # from it here instead of reading the stored copy back.
        with self._lock:
            unsealed: dict[str, Any] = (
                {"resume": without_sealed(self.resume)} if has_sealed(self.resume) else {}
            )
        # The totals, the last log line and the final state: one transaction, if the job is still this run's.
        try:
            self.host.set_state(
                self.job_id,
                JobState.succeeded,
                events=[("info", f"succeeded: {summary}; manifest written")],
                sealed_dropped=True,
                when=held_by(self.host.runner_id, in_state(JobState.running)),
                **unsealed,
                **totals,
            )
        except (StateChanged, JobEnded):
            self.host.still_held(self.job_id)  # says why in this process's log
            return
        if rec.cleanup_policy == "delete_on_ack":  # every chunk acknowledged before the end: expired now
            expire_at_end(self.host, self.job_id)
        if not self.dest.remote and not self.resume.get("swap") and rec.cleanup_policy == "retain":
            # A later job of the same source in this server takes these digests from memory (made after
            # the job has ended: 50 ms for 20,000 files, not part of its time). Not for an output the
            # cleanup policy removes: its entries would hide an older copy that is still there.
            recent = job_entries(str(self.dest.workdir), self.dest.relative, self.resume, chunks)
            RECENT.put(self.job_id, recent)

    # -- a single source --------------------------------------------------------------------------------

    def _run_source(self, rec: JobRecord, uri: str) -> None:
        source = open_source(uri, source_roots=self.host.source_roots)
        plain = rec.convert is None and not self._expands()
        # The listing, written with the job's chunks (a first run's one transaction before any transfer).
        listing: dict[str, Any] = {}
        if "items" in self.resume:
            items = [self._load_item(d, uri) for d in self.resume["items"]]
        else:
            items = self._list_source(source)
            for item in items:
                item.name = check_output_name(item.name)
            total = None if any(i.size is None for i in items) else sum(i.size or 0 for i in items)
            listing["bytes_total"] = total
            if plain:
                listing["chunks_total"] = len(items)
            listing["events"] = [("info", f"{len(items)} file(s) to stage, {format_bytes(total)}")]
            if (self.resume.get("request") or {}).get("checksum") and len(items) != 1:
                listing["events"].append(
                    (
                        "warning",
                        f"the expected checksum is of one file and this source lists {len(items)}: "
                        "no file is checked against it",
                    )
                )
            with self._lock:
                self.resume["items"] = [self._dump_item(i) for i in items]
                # Not copied (a JSON round trip of the listing: 2 % of a 2,000-file link job, and as many
                # objects again for the collector): it is written by this thread before any item of
                # this source is transferred, so nothing changes it meanwhile.
                listing["resume"] = self.resume
        if plain:
            chunks = self._plain_chunks(items, **listing)
            self._transfer_all(source, rec.method, [(item, chunks[i]) for i, item in enumerate(items)])
        else:
            if listing:
                self._flush_chunks(force=True, **listing)
            for item in items:
                self.control.check()
                if self._expands():
                    self._stage_item(source, rec, rec.method, item)
                else:
                    self._convert(source, rec, rec.method, item)
                # At most every progress interval: a write per table was a tenth of a small table's time.
                self.host.report_progress(self.job_id)
        self.control.check()

    def _plain_chunks(self, items: list[SourceItem], **listing: Any) -> dict[int, JobChunk]:
        """One chunk per item of a plain transfer (index = item order): the missing ones created in one
        transaction, with ``listing`` (columns of the job, its resume data, ``events``)."""
        chunks = {c.index: c for c in self._chunks_at_start}  # no chunk is written before these
        for index, item in enumerate(items):
            if index not in chunks:
                chunks[index] = self._new_chunk(
                    index=index,
                    path=item.name,
                    state=PENDING,
                    bytes=item.size,
                    content_type=item.content_type,
                )
        self._flush_chunks(force=True, **listing)
        return chunks

    # -- the end ----------------------------------------------------------------------------------------

    def _swap_in(self, rec: JobRecord) -> None:
        """Put the output staged beside the old one in its place, and retire the job it replaces. What the
        old output recorded (:func:`recorded_outputs`) is kept in the resume data first, so a run after a
        stop part way goes on from there (:meth:`_finish_swap`)."""
        swap = self.resume["swap"]
        replaced = self.store.get_job(swap["replaces"]) if swap.get("replaces") else None
        if not swap.get("done"):  # else swapped in by a run that stopped before the job's end
            self._put_in_place(rec, swap, replaced)
        if replaced is not None and not JobState(replaced.state) == JobState.expired:
            expire_chunks(self.store, replaced.id)  # done before the swap, unless a run that stopped did it
            why = "staged again" if replaced.state in UNFINISHED_STATES else "a source changed"
            self.host.log_event(replaced.id, "info", f"output replaced by job {self.job_id} ({why})")
            self.host.set_state(replaced.id, JobState.expired)

    def _put_in_place(self, rec: JobRecord, swap: dict[str, Any], replaced: JobRecord | None) -> None:
        """The swap of :meth:`_swap_in` (:func:`swap_in`), recorded ``done`` once over."""
        staged_before, suffix = swap.get("before"), self.job_id[:8]
        resumed = staged_before is not None  # a run that stopped had started the swap
        root = self._swap_root()
        if staged_before is None:
            folder = self.replaced_folder
            old = read_manifest(folder, root=root) if folder is not None else None
            staged_before = recorded_outputs(old)
            if old is None and replaced is not None:  # a failed job's files, no manifest: what it published
                staged_before |= published_by(replaced, self.store.list_chunks(replaced.id))
            with self._lock:  # the old folder is aside, or the old manifest gone, once the swap starts
                swap["before"] = staged_before
                self._save_resume(bytes_done=self.live.bytes_done)  # the job's totals (_totals)
        aside_name = f".replaced-{suffix}"
        if self.recovering and swapped_already(root, rec.destination, swap["into"], aside_name, self.job_id):
            done = Swapped()
        else:
            # The old output's chunks are expired before its folder is touched: an ack of one of them from
            # now on deletes nothing (it would be the new output's file once renamed: a hard link to the
            # same bytes, of the same size and time), and one under way ends first (engine.acks).
            expired = expire_chunks(self.store, replaced.id) if replaced is not None else {}
            try:
                done = swap_in(
                    root,
                    rec.destination,
                    swap["into"],
                    staged_before=staged_before,
                    staged_now={self.dest.relative(p) for p in unconsumed_paths(self.store, rec)},
                    aside_name=aside_name,
                    suffix=suffix,
                )
            except BaseException:
                if nothing_moved(root, rec.destination, swap["into"], aside_name):
                    restore_chunks(self.store, expired)  # the old output is whole where it was
                raise
        aside = PurePosixPath(rec.destination).parent / aside_name
        where = rec.destination if staged_inside(rec.destination, swap["into"]) else aside.as_posix()
        for level, message in kept_lines(done, set(staged_before), where):
            self._log(level, message)
        if resumed and (earlier := kept_before(root / rec.destination, suffix, done)):
            shown = ", ".join(earlier[:5]) + (f" and {len(earlier) - 5} more" if len(earlier) > 5 else "")
            self._log("warning", f"kept under another name before the server stopped: {shown}")
        with self._lock:
            swap["done"] = True
            swap.pop("before", None)
            self._save_resume()
        self._log("info", f"swapped into {rec.destination}")

    def _finish_swap(self, rec: JobRecord) -> tuple[list[str] | None, dict[str, dict[str, str]]] | None:
        """The run after one that stopped (a crash, a shutdown) once its complete output was being swapped
        in, or was: the swap goes on from where it stopped, and the job ends as that run would have, nothing
        staged or listed again (no pause or cancel can stop it now). Returns the manifest's entry names and
        failures, read back from the manifest the output holds (as :meth:`run_items` returns them); None
        when it holds none (gone meanwhile), and the run goes on to check what the job staged there."""
        self._log("info", "the server stopped while the output was swapped in; finishing the swap")
        self._swap_in(rec)
        rec.resume = json_copy(self.resume)  # swap done: the job's destination is its folder now
        self.dest = self.host.destination_of(rec)
        manifest = self.dest.read_manifest()
        if manifest is None or manifest.get("job_id") != self.job_id:
            return None
        with self.live.lock:  # what the stopped run had counted by the swap's start
            self.live.bytes_done = max(self.live.bytes_done, rec.bytes_done or 0)
        listing = manifest.get("entries")
        if listing is None:
            return None, {}
        return [e["name"] for e in listing], {e["name"]: e["error"] for e in listing if e.get("error")}

    def _swap_root(self) -> Path:
        """The root folder of a replacing job: its scratch folder (``swap["into"]``, relative to the root,
        beside the destination or inside it) is the job's workdir until the swap."""
        return self.dest.workdir.parents[len(PurePosixPath(self.resume["swap"]["into"]).parts) - 1]

    def _totals(
        self, rec: JobRecord, chunks: list[ChunkSummary], staged: list[ChunkSummary], *, failed: bool
    ) -> dict[str, Any]:
        """The job's final bytes, rows and chunk counts (columns of :class:`JobRecord`), also set on the
        live counters; persisted by the caller with the job's final state."""
        exact = not failed and rec.convert is None and not self._expands()  # files as staged, not as listed
        total = sum(c.bytes or 0 for c in staged) if exact else rec.bytes_total
        with self.live.lock:
            self.live.floor_bytes = self.live.floor_rows = 0  # these figures are exact
            self.live.rows_done = rows = sum(c.rows or 0 for c in staged)
            if total is not None and not failed:
                self.live.bytes_done = total if exact else max(self.live.bytes_done, total)
            bytes_done = self.live.bytes_done
        return {
            **({"bytes_total": total} if exact else {}),  # else as the listing stored it
            "bytes_done": bytes_done,
            "rows_done": rows,
            "chunks_done": len(staged),
            "chunks_total": len(chunks),
        }
