"""Conversion steps of a run: a table item becomes numbered Parquet parts, one chunk each.

Anything that is not a table (an image, a Parquet file) is staged as it is, as one chunk, and recorded in
the job's resume data under ``not_converted`` (output name -> why), which the job's description shows as a
notice. A remote table is downloaded (resumably) into the job's scratch folder first.

Progress stays truthful: ``bytes_done`` counts source bytes once (a downloaded table's bytes as they
arrive, not again as the converter reads them back), ``rows_done`` the rows converted, and the bytes of
each Parquet part are recorded under ``part_bytes`` (part path -> bytes) as the part is published, before
its chunk is counted (``progress.output_bytes``).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from astropy.io import fits

from jupyter_staging.destinations.base import remove_tree_if_empty, scratch_dir
from jupyter_staging.engine.deadparts import DeadParts
from jupyter_staging.engine.folders import parts_tagged
from jupyter_staging.engine.items import sha256_file
from jupyter_staging.engine.models import DONE_STATES, ChunkState
from jupyter_staging.engine.pipeline import PipelinedStager
from jupyter_staging.engine.schema import JobChunk
from jupyter_staging.engine.store import BYTES_COLUMNS, NOT_CONVERTED, PART_BYTES, JobRecord
from jupyter_staging.engine.tablefolders import TableFolders, parquet_folder
from jupyter_staging.errors import (
    JobInterrupted,
    SourceChanged,
    TransferFailed,
)
from jupyter_staging.formats.convert import convert_to_parquet
from jupyter_staging.formats.detect import detect_format, table_problem
from jupyter_staging.formats.fits import images_left_out
from jupyter_staging.safety.control import DelegatingControl, JobControl
from jupyter_staging.sources.base import Source, SourceItem

PARQUET_CONTENT_TYPE = "application/vnd.apache.parquet"
#: FITS files of a job whose image data left out of its Parquet output the log names (one line each).
IMAGES_NOTED_MAX = 3
#: FITS files of a job looked at for image data (their headers read again: 0.6-1.7 ms each here), so that a
#: folder of 20,000 tables pays for 100 at most; image data of files after these is not said.
IMAGES_CHECKED_MAX = 100


class ImageNotes:
    """How many FITS files of one job were looked at for image data left out of their Parquet output, and
    how many had some (files are converted on several threads)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.checked = 0
        self.noted = 0

    def look(self) -> bool:
        """Whether to look at one more file: not once the log said there are more than it names, nor past
        :data:`IMAGES_CHECKED_MAX` files."""
        with self._lock:
            if self.noted > IMAGES_NOTED_MAX or self.checked >= IMAGES_CHECKED_MAX:
                return False
            self.checked += 1
            return True

    def note(self) -> int:
        """Count one file with image data left out; returns how many were counted before it."""
        with self._lock:
            self.noted += 1
            return self.noted - 1


class CountedControl(DelegatingControl):
    """The job's control for converting a file whose source bytes were counted already (as they were
    downloaded): pause, cancel, rows and log lines go to ``job``; source bytes are not counted twice."""

    def __init__(self, job: JobControl) -> None:
        super().__init__(job, on_rows=job.add_rows, log=job.log)


class ConvertingStager(PipelinedStager, TableFolders, DeadParts):
    """Adds conversion to Parquet to :class:`~jupyter_staging.engine.pipeline.PipelinedStager`."""

    def _convert(
        self, source: Source, rec: JobRecord, method: str, item: SourceItem, entry: str | None = None
    ) -> None:
        """Convert table ``item`` into ``<stem>.parquet/part-NNNNN.parquet`` chunks (or stage it as it is
        when it is not a table); resumes after the parts already recorded."""
        if self._resume_has("converted", item.name):
            return
        if self.recovering and self._chunks_named(item.name):
            # Staged as it is in an earlier run, which recorded why (resume data, job log).
            self._convert_passthrough(source, method, item, entry=entry, why="")
            return
        if self._reuse_converted(item, entry):
            return
        with self._local_copy(source, item) as (local, downloaded):
            self._convert_local(source, rec, method, item, local, downloaded, entry)

    def _convert_local(
        self,
        source: Source,
        rec: JobRecord,
        method: str,
        item: SourceItem,
        local: Path,
        downloaded: Path | None,
        entry: str | None,
    ) -> None:
        """:meth:`_convert` of ``item`` read at ``local`` (``downloaded`` when it was downloaded there)."""
        opts = rec.convert or {}
        fmt = detect_format(local)
        problem = None if fmt in (None, "parquet") or opts.get("hdu") is not None else table_problem(local)
        if fmt is None or fmt == "parquet" or problem is not None:
            why = "already Parquet" if fmt == "parquet" else problem or "not a table"
            self._convert_passthrough(source, method, item, downloaded=downloaded, entry=entry, why=why)
            return
        if fmt == "fits" and len(self.resume.get("items", [])) == 1:
            self._expect_chunks(local, opts)
        bytes_before = self.live.bytes_done if downloaded is None else None
        started_ns = time.time_ns()
        try:
            self._same_version(item)
            out_rel = self._convert_file(
                local,
                item.name,
                opts,
                entry,
                counted=downloaded is not None,
                listed=source.local_path(item),
                last_with_table=True,
            )
        except JobInterrupted:
            raise  # paused, cancelled or shut down: the parts stay, and a resumed run goes on after them
        except Exception as exc:
            self._withdraw_parts(item.name, exc, started_ns)
            raise
        if bytes_before is not None and self.live.bytes_done == bytes_before:
            self.control.add_bytes(item.size or 0)
        if fmt == "fits":  # before _converted removes a download: its headers are read again
            self._log_images_left_out(item.name, local, opts.get("hdu"))
        self._converted(item, out_rel, self.dest.workdir / out_rel, downloaded)

    def _log_images_left_out(self, name: str, local: Path, hdu: int | str | None) -> None:
        """Say in the job's log which image data of FITS file ``name`` (read at ``local``) its Parquet output,
        which holds table ``hdu`` only, leaves out: a user finds no image in the folder, and learns why.
        One line for each of the first :data:`IMAGES_NOTED_MAX` files, then one for the rest, among the
        first :data:`IMAGES_CHECKED_MAX` FITS files of the job (:class:`ImageNotes`): a folder of 20,000
        light curves, each with its aperture image, must neither bury the log nor pay 20,000 header reads."""
        notes: ImageNotes = self.__dict__.setdefault("_image_notes", ImageNotes())
        if not notes.look():
            return
        left_out = images_left_out(local, hdu)
        if not left_out:
            return
        said = notes.note()
        table, images = left_out
        if said < IMAGES_NOTED_MAX:
            self.control.log(
                "warning",
                f"{name}: only its table ({table}) was converted; its image data ({'; '.join(images)}) is not"
                " in the output: stage the file without --to-parquet to keep it",
            )
        elif said == IMAGES_NOTED_MAX:
            self.control.log("warning", "more FITS files of this job had image data left out (not listed)")

    def _convert_file(
        self,
        local: Path,
        name: str,
        opts: dict[str, Any],
        entry: str | None,
        *,
        counted: bool = True,
        listed: Path | None = None,
        last_with_table: bool = False,
    ) -> str:
        """Convert the local table ``local`` (output name ``name``) into ``<stem>.parquet/part-*.parquet``
        chunks, after the parts an earlier attempt recorded; returns the output folder (relative).
        ``counted``: the source bytes were counted already (a download, or the archive a file was
        extracted from), so the converter reports rows only; False for a table read in place. ``listed``:
        the table's own path when ``local`` reads it through this process's descriptors (what other
        processes, Dask workers, open instead). ``last_with_table``: the caller writes what ends the table
        (:meth:`_converted`) at once, so the last part's record waits for that write instead of being a
        write of its own (every other part is recorded before the next is published, so a stop leaves at
        most one part published and not recorded per table, as :meth:`_drop_unrecorded_part` expects)."""
        out_rel = self._output_folder(name)
        out_dir = self.dest.workdir / out_rel
        existing, recorded = self._recorded_parts(name, out_rel)
        foreign = self._foreign_parts(out_rel, out_dir)
        if self.recovering:
            self._drop_unrecorded_part(out_dir, len(existing), foreign | recorded)
        convert_to_parquet(
            local,
            out_dir,
            chunk_rows=int(opts.get("chunk_rows") or 100_000),
            compression=str(opts.get("compression") or "zstd"),
            hdu=opts.get("hdu"),
            encoding=opts.get("encoding"),
            control=CountedControl(self.control) if counted else self.control,
            start_index=len(existing),
            on_chunk=lambda info: self._record_part(
                out_dir, out_rel, info, entry, name, later=last_with_table and info.last
            ),
            root=self.dest.files.root,
            owner=self.job_id,
            claim_untagged=not parts_tagged(self.resume),
        )
        return out_rel

    def _reuse_converted(self, item: SourceItem, entry: str | None) -> bool:
        """When ``item`` is unchanged since the output this job replaces, take that output's Parquet parts
        (hard links, or local copies) as this job's chunks instead of converting again. Returns True when
        it did."""
        if self.replaced_folder is None or not self._unchanged(item):
            return False
        out_rel = parquet_folder(item.name)
        # This table's parts only: an output where an earlier version mixed two tables is not taken whole.
        parts = sorted(
            p
            for p, obj in self._previous_objects().items()
            if p.startswith(out_rel + "/") and obj.get("source_item") == item.name
        )
        objects = self._previous_objects()
        # Each part as staged: one the user changed since (edited at the same size) is converted again.
        if not parts or not all(self._reusable_part(rel, objects[rel]) for rel in parts):
            return False
        try:
            self._same_version(item)  # the version the replaced output was made of
        except SourceChanged:
            return False  # parts of another version: converting raises it again, and removes them
        self._output_folder(item.name)
        self._foreign_parts(out_rel, self.dest.workdir / out_rel)  # before the first part is linked there
        # A run stopped part way through the links: its recorded parts stay, its links are taken back.
        recorded = dict(self._chunks_under(out_rel)) if self.recovering else {}
        for rel in parts:
            self._take_replaced_part(item, rel, recorded.get(rel), entry)
        self._resume_add("converted", item.name)
        self._save_changes()
        self._log("info", f"{item.name}: unchanged; {len(parts)} Parquet part(s) taken from the local copy")
        return True

    def _take_replaced_part(
        self, item: SourceItem, rel: str, stopped: JobChunk | None, entry: str | None
    ) -> None:
        """Take Parquet part ``rel`` of the output this job replaces as this job's chunk (a hard link, or a
        local copy: :meth:`_reuse_output`). ``stopped``: its chunk, recorded by a run of this job that
        stopped part way: kept as it is when done; a link that run made and did not record is taken back
        when it is the very file of the replaced output, unchanged (:meth:`_reused_before_the_stop`).
        Raises :class:`TransferFailed` when the replaced part is gone."""
        old = self._previous_objects()[rel]
        if stopped is not None and stopped.state in DONE_STATES:
            self.control.add_bytes(stopped.bytes or 0)
            self.control.add_rows(int(old.get("rows") or 0))
            return
        final = self.dest.workdir / rel
        reused = (
            self._reused_before_the_stop(item, final, rel) if self.recovering else None
        ) or self._reuse_output(item, final, rel)
        if reused is None:  # checked before; gone since: the job fails and is run again
            raise TransferFailed(f"{item.name}: part {rel} of the replaced output disappeared")
        path = self.dest.put(
            final,
            rel,
            size=reused[0],
            sha256=reused[1],
            content_type=PARQUET_CONTENT_TYPE,
            control=self.control,
        )
        # Named before the chunk is made: no flush writes the chunk without its table.
        self._resume_put("outputs", rel, item.name)
        chunk = stopped or self._new_chunk(
            path=rel,
            state=ChunkState.pending.value,
            rows=old.get("rows"),
            bytes=reused[0],
            sha256=reused[1],
            content_type=PARQUET_CONTENT_TYPE,
            entry=entry,
        )
        self._part_written(rel, reused[0])
        self._chunk_ready(chunk, path=path)
        self.control.add_rows(int(old.get("rows") or 0))

    @contextmanager
    def _local_copy(self, source: Source, item: SourceItem) -> Iterator[tuple[Path, Path | None]]:
        """``(local path, downloaded)`` for the block: a local file read where it is (through the
        descriptor of its folder, :meth:`~jupyter_staging.sources.base.Source.reading_path`; a file changed
        since the listing is relisted first), else a resumable download into the job's scratch folder (then
        also returned as ``downloaded``)."""
        if source.local_path(item) is not None:
            if source.revalidate(item):
                self._relist(item, item.validator)
            with source.reading_path(item) as local:
                assert local is not None
                yield local, None
            return
        # Remote: download first (resumable), then decide from the bytes whether it is a table.
        downloaded = scratch_dir(self.dest.workdir, self.job_id) / item.name
        if not downloaded.exists():
            self._stage_file(source, "download", item, downloaded, recovering=False)
        else:
            self.control.add_bytes(item.size or 0)
        yield downloaded, downloaded

    def _record_part(
        self,
        out_dir: Path,
        out_rel: str,
        info: Any,
        entry: str | None,
        item_name: str,
        *,
        later: bool = False,
    ) -> None:
        """A part file the converter published: hand it to the destination, then record its chunk, in a
        write of its own unless ``later`` (then with the next write: the caller's, at once)."""
        rel = f"{out_rel}/{info.name}"
        raw = _bytes_columns(out_dir / info.name) if info.index == 0 else []
        self._resume_put("outputs", rel, item_name)  # the flush writing the part's record writes this
        if raw:  # shown as a notice: text that is not UTF-8, kept as bytes (saved with the part's size)
            self._resume_put(BYTES_COLUMNS, item_name, raw)
        # Published locally; for object storage uploaded now (and the local part removed). Only then
        # is the chunk recorded, so an interrupted upload is redone from the part on resume.
        path = self.dest.put(
            out_dir / info.name,
            rel,
            size=info.bytes,
            sha256=info.sha256,
            content_type=PARQUET_CONTENT_TYPE,
            control=self.control,
        )
        chunk = self._new_chunk(
            path=rel,
            state=ChunkState.pending.value,
            rows=info.rows,
            bytes=info.bytes,
            sha256=info.sha256,
            content_type=PARQUET_CONTENT_TYPE,
            entry=entry,
        )
        self._part_written(rel, info.bytes)
        if later:  # its name was fsynced as it was published: a batch another thread fails keeps it
            self._chunk_done(chunk, path=path, synced=True)
        else:
            self._chunk_ready(chunk, path=path)

    def _part_written(self, rel: str, size: int) -> None:
        """Record the ``size`` bytes of Parquet part ``rel`` (``progress.output_bytes`` sums them); keyed by
        part, so a part written again after a stop is counted once. Written with the part's chunk record
        (in the same transaction, by the flush that marks it ready), not on its own: one write of the resume
        data per part, where there were two."""
        self._resume_put(PART_BYTES, rel, int(size))

    def _converted(self, item: SourceItem, out_rel: str, out_dir: Path, downloaded: Path | None) -> None:
        """Record ``item`` as converted and remove its scratch download."""
        work = self.dest.workdir
        self._resume_add("converted", item.name)
        # A run resumed later never reads the table again (it may have changed); the log line and the last
        # part's record go with it. Listeners hear of it with the next progress report (once per interval,
        # not once per table of a folder of thousands).
        self._save_changes(events=[("info", f"{item.name}: converted to {out_rel}")])
        if downloaded is not None:
            self.dest.files.unlink(downloaded)
            remove_tree_if_empty(downloaded.parent, work)
        if self.dest.remote:
            remove_tree_if_empty(out_dir, work)

    def _expect_chunks(self, path: Path, opts: dict[str, Any]) -> None:
        """Set ``chunks_total`` ahead of a FITS conversion from the table's NAXIS2 (rows)."""
        try:
            with fits.open(path, memmap=True) as hdul:
                hdu = opts.get("hdu")
                if hdu is None:
                    table = next((h for h in hdul if isinstance(h, (fits.BinTableHDU, fits.TableHDU))), None)
                else:
                    table = hdul[hdu]
                rows = int(table.header.get("NAXIS2", 0)) if table is not None else 0
            chunk_rows = int(opts.get("chunk_rows") or 100_000)
            if rows:
                self.store.update_job(
                    self.job_id, load_resume=False, chunks_total=math.ceil(rows / chunk_rows)
                )
        except Exception:  # noqa: S110 - only an estimate; the converter reports real errors
            pass

    def _convert_passthrough(
        self,
        source: Source,
        method: str,
        item: SourceItem,
        downloaded: Path | None = None,
        entry: str | None = None,
        why: str = "not a table",
    ) -> None:
        """Stage a file that is not a table (an image, a Parquet file) as it is, as one chunk; a file
        ``downloaded`` to the scratch folder already is moved into place rather than fetched again.
        ``why`` is logged (nothing when empty)."""
        chunk: JobChunk
        for chunk in self._chunks_named(item.name) if self.recovering else ():
            if chunk.state != ChunkState.pending.value:
                self.control.add_bytes(chunk.bytes or 0)
                return
            break
        else:
            chunk = self._new_chunk(
                path=item.name,
                state=ChunkState.pending.value,
                bytes=item.size,
                content_type=item.content_type,
                entry=entry,
            )
        if why:
            self._log("info", f"{item.name}: {why}; staged as it is")
            self._resume_put(NOT_CONVERTED, item.name, why)
            self._save_changes()
        final = self.dest.workdir / item.name
        if downloaded is not None:
            # Moved to ``final`` by a run that stopped before the upload: uploaded as it is.
            found = self._file_digest(final) if self.dest.remote else None
            if found is not None:
                self.dest.files.unlink(downloaded)
                size, sha = found
            else:  # tagged as the job's at its final name: taken back if a crash comes before the record
                size, sha = self._publish_tagged(downloaded, final)
        else:
            size, staged_sha = self._stage_file(
                source, "copy" if method == "copy" else "download", item, final, recovering=self.recovering
            )
            sha = staged_sha if staged_sha is not None else sha256_file(final)  # only a link has none
        path = self.dest.put(
            final, item.name, size=size, sha256=sha, content_type=item.content_type, control=self.control
        )
        self._chunk_ready(chunk, bytes=size, sha256=sha, path=path)


def _bytes_columns(part: Path) -> list[str]:
    """The names of the columns of Parquet part ``part`` whose type is binary (bytes): text a CSV/TSV
    held that was not UTF-8, as no ``encoding`` was given. Reads the footer only; ``[]`` when it cannot."""
    try:
        schema = pq.read_schema(part)
    except (OSError, pa.ArrowException):
        return []
    return [f.name for f in schema if pa.types.is_binary(f.type) or pa.types.is_large_binary(f.type)]
