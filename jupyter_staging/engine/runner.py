"""Running one staging job: list the source, stage each item as a chunk, convert tables, write the manifest.

A :class:`JobRunner` runs on an executor thread. Every file is produced locally, complete and verified,
in its destination's work folder, then handed to the job's
:class:`~jupyter_staging.destinations.core.Destination` (nothing more to do for a folder; an upload for object
storage). Each chunk is persisted as soon as it is published, so a job interrupted by a pause, a shutdown
or a crash continues from its finished chunks and from the bytes already in its ``.part`` files.

A manifest job (``CreateJob.manifest``) lists and stages its entries in parallel, at most
:data:`MANIFEST_CONCURRENCY` at a time, each into ``<entry name>/`` of the job's output. An entry that
fails is recorded (its chunks keep ``pending`` with an ``error``) and the others go on; the job then ends
``failed`` with code ``partial`` after writing a manifest of what was staged.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import math
import os
import re
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, TypeVar

from jupyter_staging.destinations.base import Destination, make_private_dir, remove_tree_if_empty, scratch_dir
from jupyter_staging.formats.convert import convert_to_parquet
from jupyter_staging.formats.detect import detect_format, is_table
from jupyter_staging.destinations.manifest import build_manifest
from jupyter_staging.engine.models import ChunkState, JobState
from jupyter_staging.engine.store import ChunkRecord, JobRecord, utcnow
from jupyter_staging.errors import (
    DestinationExists,
    JobInterrupted,
    PartiallyStaged,
    StagingError,
    TransferFailed,
)
from jupyter_staging.safety.control import JobControl
from jupyter_staging.safety.partfile import BLOCK_SIZE, PartFile, part_path, publish
from jupyter_staging.safety.paths import check_output_name
from jupyter_staging.safety.redact import redact_text, redact_url
from jupyter_staging.sources.base import Source, SourceItem
from jupyter_staging.sources.registry import open_source

if TYPE_CHECKING:
    from jupyter_staging.engine.manager import LiveProgress, StagingManager

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Entries of a manifest job listed or staged at the same time.
MANIFEST_CONCURRENCY = 4
PARQUET_CONTENT_TYPE = "application/vnd.apache.parquet"
_PART_RE = re.compile(r"part-(\d+)\.parquet")


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes, read in :data:`~jupyter_staging.safety.partfile.BLOCK_SIZE` blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(BLOCK_SIZE):
            digest.update(block)
    return digest.hexdigest()


def _resume_item_names(resume: dict[str, Any]) -> list[str]:
    names = [i["name"] for i in resume.get("items", [])]
    for entry in (resume.get("entries") or {}).values():
        names.extend(i["name"] for i in entry.get("items", []))
    return names


def remove_job_output(manager: StagingManager, rec: JobRecord, *, keep_ready: bool) -> int:
    """Delete what job ``rec`` wrote: ``.part`` files, scratch files, unfinished uploads, and unless
    ``keep_ready`` its published chunks and manifest (for object storage: every object below the job's
    prefix). Returns the number of files (objects) removed.

    Only the job's own destination is touched: paths inside its folder (a symlink is removed, never
    followed) or keys below ``prefix/<job_id>/``. Raises
    :class:`~jupyter_staging.errors.TransferFailed` when the object store cannot be cleaned.
    """
    destination = manager.destination_of(rec)
    resume = rec.resume or {}
    chunk_paths = [destination.relative(c.path) for c in manager.store.list_chunks(rec.id)]
    return destination.remove(
        chunk_paths, _resume_item_names(resume), list(resume.get("convert_dirs", [])), keep_ready=keep_ready
    )


def _error_of(exc: BaseException) -> dict[str, str]:
    """``{"code", "message"}`` of an entry's failure, secrets redacted."""
    if isinstance(exc, StagingError):
        return {"code": exc.code, "message": redact_text(exc.message)}
    return {"code": "internal_error", "message": f"unexpected error: {type(exc).__name__}"}


class JobRunner:
    """Runs job ``job_id`` of ``manager`` once (from queued to a final or paused state)."""

    def __init__(self, manager: StagingManager, job_id: str) -> None:
        from jupyter_staging.engine.manager import LiveProgress

        self.manager = manager
        self.store = manager.store
        self.job_id = job_id
        self.live: LiveProgress = LiveProgress()
        self.control = JobControl(on_bytes=self._on_bytes, on_rows=self._on_rows, log=self._log)
        self.recovering = False
        #: Engine bookkeeping persisted in ``JobRecord.resume``; guarded by ``_lock`` (entries run in
        #: parallel), as is the allocation of chunk indices.
        self.resume: dict[str, Any] = {}
        self._lock = threading.RLock()
        self.dest: Destination

    # -- callbacks from sources and converters ------------------------------------------------------

    def _on_bytes(self, n: int) -> None:
        with self.live.lock:
            self.live.bytes_done += n
        self.manager._progress(self.job_id)

    def _on_rows(self, n: int) -> None:
        with self.live.lock:
            self.live.rows_done += n
        self.manager._progress(self.job_id)

    def _log(self, level: str, message: str) -> None:
        self.manager._log(self.job_id, level, message)

    # -- the run ------------------------------------------------------------------------------------

    def run(self) -> None:
        """Run the job; never raises (errors end the job ``failed`` with a code)."""
        m = self.manager
        try:
            rec = self.store.get_job(self.job_id)
            if rec is None or rec.state != JobState.queued.value:
                return
            if rec.requested == JobState.paused.value:
                m._set_state(self.job_id, JobState.paused, requested=None)
                return
            if rec.requested == JobState.cancelled.value:
                m._finish_cancelled(self.job_id)
                return
            with m._lock:
                m._live[self.job_id] = self.live
            rec = m._set_state(
                self.job_id, JobState.running, started_at=rec.started_at or utcnow(), requested=None
            )
            self._log("info", "running")
            self._run(rec)
        except JobInterrupted as stop:
            self._interrupted(stop.reason)
        except Exception as exc:  # every failure ends the job with a code, never a traceback
            try:
                rec = self.store.get_job(self.job_id)
                if rec is not None:
                    try:
                        remove_job_output(m, rec, keep_ready=True)
                    except Exception as cleanup:
                        self._log(
                            "warning", f"could not remove partial output: {_error_of(cleanup)['message']}"
                        )
                m._fail(self.job_id, exc)
            except Exception:  # the database itself failed; nothing more we can record
                log.exception("could not record failure of job %s", self.job_id)
        finally:
            m._release(self.job_id)

    def _interrupted(self, reason: str) -> None:
        m = self.manager
        m._progress(self.job_id, force=True)
        if reason == "paused":
            m._set_state(self.job_id, JobState.paused, requested=None)
        elif reason == "cancelled":
            m._finish_cancelled(self.job_id)
        # "shutdown": stay running in the database; start() resumes the job in the next process.

    def _run(self, rec: JobRecord) -> None:
        m = self.manager
        source_uri, entries = m.raw_sources(rec)
        self.resume = dict(rec.resume or {})
        self.resume["attempts"] = int(self.resume.get("attempts", 0)) + 1
        self.recovering = self.resume["attempts"] > 1
        self._save_resume()
        self.dest = m.destination_of(rec)
        if self.dest.remote:
            make_private_dir(self.dest.workdir)
        else:
            self.dest.workdir.mkdir(parents=True, exist_ok=True)
        if entries is not None:
            self._run_manifest(rec, entries)
        else:
            self._run_source(rec, source_uri)

    def _run_source(self, rec: JobRecord, uri: str) -> None:
        source = open_source(uri, source_roots=self.manager.source_roots)
        if "items" in self.resume:
            items = [self._load_item(d) for d in self.resume["items"]]
        else:
            items = source.list_items()
            for item in items:
                item.name = check_output_name(item.name)
            total = None if any(i.size is None for i in items) else sum(i.size or 0 for i in items)
            fields: dict[str, Any] = {"bytes_total": total}
            if rec.convert is None:
                fields["chunks_total"] = len(items)
            with self._lock:
                self.resume["items"] = [self._dump_item(i) for i in items]
                rec = self.store.update_job(self.job_id, resume=copy.deepcopy(self.resume), **fields) or rec
            self._log("info", f"{len(items)} file(s) to stage, {total if total is not None else '?'} bytes")
        chunks = {c.index: c for c in self.store.list_chunks(self.job_id)}
        if rec.convert is None:
            for index, item in enumerate(items):
                if index not in chunks:
                    chunks[index] = self.store.upsert_chunk(
                        ChunkRecord(
                            id=f"{self.job_id}-{index}",
                            job_id=self.job_id,
                            index=index,
                            path=item.name,
                            state=ChunkState.pending.value,
                            bytes=item.size,
                            content_type=item.content_type,
                        )
                    )
        self._count_done(list(chunks.values()))
        for index, item in enumerate(items):
            self.control.check()
            if rec.convert is None:
                self._transfer(source, rec.method, item, chunks[index])
            else:
                self._convert(source, rec, rec.method, item)
            self.manager._progress(self.job_id, force=True)
        self.control.check()
        self._finish(rec)

    # -- bookkeeping ----------------------------------------------------------------------------------

    def _save_resume(self) -> None:
        with self._lock:
            self.store.update_job(self.job_id, resume=copy.deepcopy(self.resume))

    def _dump_item(self, item: SourceItem) -> dict[str, Any]:
        """``item`` as JSON for the database: a locator holding a secret (a presigned URL) is stored
        redacted, its raw form sealed (:mod:`jupyter_staging.safety.sealed`)."""
        data = asdict(item)
        shown = redact_url(item.locator)
        if shown != item.locator:
            data["locator"] = shown
            data["sealed"] = self.manager.secrets.seal(item.locator)
        return data

    def _load_item(self, data: dict[str, Any]) -> SourceItem:
        data = dict(data)
        sealed = data.pop("sealed", None)
        if sealed:
            data["locator"] = self.manager.secrets.open(sealed)
        return SourceItem(**data)

    def _count_done(self, chunks: list[ChunkRecord]) -> None:
        done = [c for c in chunks if c.state in (ChunkState.ready.value, ChunkState.acked.value)]
        with self.live.lock:
            self.live.bytes_done = 0
            self.live.rows_done = sum(c.rows or 0 for c in done)
        self.store.update_job(self.job_id, chunks_done=len(done))

    def _new_chunk(self, **fields: Any) -> ChunkRecord:
        """A new chunk record with the next free index (indices are allocated under the runner's lock)."""
        with self._lock:
            index = max((c.index for c in self.store.list_chunks(self.job_id)), default=-1) + 1
            return self.store.upsert_chunk(
                ChunkRecord(id=f"{self.job_id}-{index}", job_id=self.job_id, index=index, **fields)
            )

    def _chunk_ready(self, chunk: ChunkRecord, **fields: Any) -> None:
        self.store.update_chunk(chunk.id, state=ChunkState.ready.value, **fields)
        done = sum(
            1
            for c in self.store.list_chunks(self.job_id)
            if c.state in (ChunkState.ready.value, ChunkState.acked.value)
        )
        rec = self.store.update_job(self.job_id, chunks_done=done)
        if rec is not None:
            self.manager._announce(rec)

    # -- plain transfers ----------------------------------------------------------------------------

    def _transfer(self, source: Source, method: str, item: SourceItem, chunk: ChunkRecord) -> None:
        if chunk.state != ChunkState.pending.value:
            self.control.add_bytes(chunk.bytes or 0)
            return
        final = self.dest.workdir / item.name
        size, sha = self._stage_file(source, method, item, final, recovering=self.recovering)
        path = self.dest.put(
            final, item.name, size=size, sha256=sha, content_type=item.content_type, control=self.control
        )
        self._chunk_ready(chunk, bytes=size, sha256=sha, path=path)

    def _stage_file(
        self, source: Source, method: str, item: SourceItem, final: Path, *, recovering: bool
    ) -> tuple[int, str]:
        """Bring one item to ``final``; returns ``(size_bytes, sha256_hex)``."""
        final.parent.mkdir(parents=True, exist_ok=True)
        if final.exists() and not part_path(final).exists() and (recovering or self.dest.remote):
            # Published by this job just before it stopped, before the chunk was recorded. An object-store
            # job's work folder is its own private scratch folder: whatever is published there is ours.
            if (
                final.is_file()
                and not final.is_symlink()
                and (self.dest.remote or final.stat().st_size == item.size)
            ):
                self._log("info", f"{item.name}: already complete from the previous run")
                self.control.add_bytes(final.stat().st_size)
                return final.stat().st_size, sha256_file(final)
        if method in ("hardlink", "symlink"):
            return self._link(method, item, final)
        out = PartFile(final, resume=True)
        if out.offset:
            self._log("info", f"{item.name}: resuming at byte {out.offset}")
            self.control.add_bytes(out.offset)
        try:
            source.fetch(item, out, self.control)
        except JobInterrupted:
            out.close()
            raise
        except BaseException:
            out.discard()
            raise
        finally:
            # Bytes of a restarted file were reported once already; take them back.
            self.control.add_bytes(-out.discarded)
        return out.commit(item.size)

    def _link(self, method: str, item: SourceItem, final: Path) -> tuple[int, str]:
        src = Path(item.locator)
        try:
            if method == "hardlink":
                os.link(src, final)
            else:
                os.symlink(src, final)
        except FileExistsError:
            raise DestinationExists(
                f"{final.name} already exists in the destination; not overwritten"
            ) from None
        except OSError as exc:
            code = "hardlink_failed" if method == "hardlink" else "symlink_failed"
            hint = " (source and destination must be on the same file system)" if exc.errno == 18 else ""
            raise TransferFailed(f"cannot {method} {item.name}: {exc.strerror}{hint}", code=code) from None
        size = src.stat().st_size
        self.control.add_bytes(size)
        return size, sha256_file(src)

    # -- conversions --------------------------------------------------------------------------------

    def _convert(
        self, source: Source, rec: JobRecord, method: str, item: SourceItem, entry: str | None = None
    ) -> None:
        opts = rec.convert or {}
        work = self.dest.workdir
        with self._lock:
            if item.name in self.resume.setdefault("converted", []):
                return
        if any(self.dest.relative(c.path) == item.name for c in self.store.list_chunks(self.job_id)):
            self._convert_passthrough(source, method, item, entry=entry)  # staged as-is in an earlier run
            return
        local = source.local_path(item)
        downloaded = None
        if local is None:
            # Remote: download first (resumable), then decide from the bytes whether it is a table.
            local = downloaded = scratch_dir(work, self.job_id) / item.name
            if not local.exists():
                self._stage_file(source, "download", item, local, recovering=False)
            else:
                self.control.add_bytes(item.size or 0)
        fmt = detect_format(local)
        if fmt is None or fmt == "parquet" or (opts.get("hdu") is None and not is_table(local)):
            self._convert_passthrough(source, method, item, downloaded=downloaded, entry=entry)
            return
        if fmt == "fits" and len(self.resume.get("items", [])) == 1:
            self._expect_chunks(local, opts)
        stem = PurePosixPath(item.name)
        out_rel = (stem.parent / f"{_strip_suffixes(stem.name)}.parquet").as_posix()
        out_rel = check_output_name(out_rel)
        with self._lock:
            if out_rel not in self.resume.setdefault("convert_dirs", []):
                self.resume["convert_dirs"].append(out_rel)
                self._save_resume()
        out_dir = work / out_rel
        existing = [
            c
            for c in self.store.list_chunks(self.job_id)
            if self.dest.relative(c.path).startswith(out_rel + "/")
        ]
        if self.recovering:
            self._drop_unrecorded_part(out_dir, len(existing))

        def on_chunk(info: Any) -> None:
            rel = f"{out_rel}/{info.name}"
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
            self._chunk_ready(chunk, path=path)

        if local is not None and source.local_path(item) is not None:
            bytes_before = self.live.bytes_done
        else:
            bytes_before = None
        convert_to_parquet(
            local,
            out_dir,
            chunk_rows=int(opts.get("chunk_rows") or 100_000),
            compression=str(opts.get("compression") or "zstd"),
            hdu=opts.get("hdu"),
            control=self.control,
            start_index=len(existing),
            on_chunk=on_chunk,
        )
        if bytes_before is not None and self.live.bytes_done == bytes_before:
            self.control.add_bytes(item.size or 0)
        with self._lock:
            self.resume["converted"].append(item.name)
            self._save_resume()
        if downloaded is not None:
            downloaded.unlink(missing_ok=True)
            remove_tree_if_empty(downloaded.parent, work)
        if self.dest.remote:
            remove_tree_if_empty(out_dir, work)
        self._log("info", f"{item.name}: converted to {out_rel}")

    def _drop_unrecorded_part(self, out_dir: Path, start_index: int) -> None:
        """Remove the part file ``start_index`` if a previous run published it but stopped before
        recording it (the converter publishes a part while encoding the next); it is written again."""
        if not out_dir.is_dir() or out_dir.is_symlink():
            return
        for path in out_dir.iterdir():
            match = _PART_RE.fullmatch(path.name)
            if match and int(match.group(1)) == start_index and path.is_file() and not path.is_symlink():
                self._log(
                    "info", f"{path.name}: published but not recorded before the stop; writing it again"
                )
                path.unlink()

    def _expect_chunks(self, path: Path, opts: dict[str, Any]) -> None:
        """Set ``chunks_total`` ahead of a FITS conversion from the table's NAXIS2 (rows)."""
        try:
            from astropy.io import fits

            with fits.open(path, memmap=True) as hdul:
                hdu = opts.get("hdu")
                if hdu is None:
                    table = next((h for h in hdul if isinstance(h, (fits.BinTableHDU, fits.TableHDU))), None)
                else:
                    table = hdul[hdu]
                rows = int(table.header.get("NAXIS2", 0)) if table is not None else 0
            chunk_rows = int(opts.get("chunk_rows") or 100_000)
            if rows:
                self.store.update_job(self.job_id, chunks_total=math.ceil(rows / chunk_rows))
        except Exception:  # noqa: S110 - only an estimate; the converter reports real errors
            pass

    def _convert_passthrough(
        self,
        source: Source,
        method: str,
        item: SourceItem,
        downloaded: Path | None = None,
        entry: str | None = None,
    ) -> None:
        """Stage a file that is not a table (an image, a Parquet file) as it is, as one chunk; a file
        ``downloaded`` to the scratch folder already is moved into place rather than fetched again."""
        for chunk in self.store.list_chunks(self.job_id):
            if self.dest.relative(chunk.path) == item.name:
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
        self._log("info", f"{item.name}: not a table; staged as it is")
        final = self.dest.workdir / item.name
        if downloaded is not None:
            final.parent.mkdir(parents=True, exist_ok=True)
            if self.dest.remote and final.is_file():
                downloaded.unlink()  # moved here by an earlier run that stopped before the upload
            else:
                publish(downloaded, final)
            size, sha = final.stat().st_size, sha256_file(final)
        else:
            size, sha = self._stage_file(
                source, "copy" if method == "copy" else "download", item, final, recovering=self.recovering
            )
        path = self.dest.put(
            final, item.name, size=size, sha256=sha, content_type=item.content_type, control=self.control
        )
        self._chunk_ready(chunk, bytes=size, sha256=sha, path=path)

    # -- manifest jobs --------------------------------------------------------------------------------

    def _run_manifest(self, rec: JobRecord, entries: dict[str, str]) -> None:
        """List every entry, then stage them, :data:`MANIFEST_CONCURRENCY` at a time (see the module)."""
        names = list(entries)
        with self._lock:
            listed: dict[str, dict[str, Any]] = self.resume.setdefault("entries", {})
            todo = [n for n in names if n not in listed]
        if todo:
            results = self._parallel(todo, lambda name: self._list_entry(name, entries[name]))
            with self._lock:
                listed.update(results)
                self._save_resume()
            failed = [n for n in todo if "error" in listed[n]]
            files = sum(len(listed[n].get("items", [])) for n in todo)
            self._log(
                "info",
                f"{len(names)} entries: {files} file(s) to stage"
                + (f"; {len(failed)} could not be listed ({', '.join(failed)})" if failed else ""),
            )
        items = {n: [self._load_item(d) for d in listed[n].get("items", [])] for n in names}
        self._ensure_entry_chunks(rec, names, listed, items)
        sizes = [i.size for n in names for i in items[n]]
        self.store.update_job(
            self.job_id, bytes_total=None if any(s is None for s in sizes) else sum(s or 0 for s in sizes)
        )
        chunks = self.store.list_chunks(self.job_id)
        if rec.convert is None:
            self.store.update_job(self.job_id, chunks_total=len(chunks))
        self._count_done(chunks)
        failures = {n: listed[n]["error"] for n in names if "error" in listed[n]}
        staged = self._parallel(
            [n for n in names if n not in failures],
            lambda name: self._stage_entry(rec, name, entries[name], items[name]),
        )
        failures.update({n: error for n, error in staged.items() if error is not None})
        self.control.check()
        self._finish(rec, entries=names, failures=failures)

    def _parallel(self, names: list[str], work: Callable[[str], T]) -> dict[str, T]:
        """``{name: work(name)}``, at most :data:`MANIFEST_CONCURRENCY` at once. Every call ends before
        this returns; then a :class:`JobInterrupted` (pause, cancel, shutdown) or another error of any
        call is raised."""
        if not names:
            return {}
        results: dict[str, T] = {}
        errors: list[BaseException] = []
        workers = min(MANIFEST_CONCURRENCY, len(names))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="staging-entry") as pool:
            futures = {name: pool.submit(work, name) for name in names}
            for name, future in futures.items():
                try:
                    results[name] = future.result()
                except BaseException as exc:  # re-raised below, once every entry has stopped
                    errors.append(exc)
        for error in errors:
            if isinstance(error, JobInterrupted):
                raise error
        if errors:
            raise errors[0]
        return results

    def _list_entry(self, name: str, uri: str) -> dict[str, Any]:
        """``{"items": [...]}`` for entry ``name`` (item names below ``name/``), or ``{"error": {...}}``."""
        self.control.check()
        try:
            items = open_source(uri, source_roots=self.manager.source_roots).list_items()
            for item in items:
                item.name = check_output_name(f"{name}/{item.name}")
            return {"items": [self._dump_item(i) for i in items]}
        except JobInterrupted:
            raise
        except Exception as exc:
            error = _error_of(exc)
            if error["code"] == "internal_error":
                log.error(
                    "staging job %s: listing entry %s failed: %s", self.job_id, name, redact_text(repr(exc))
                )
            self._log("warning", f"entry {name}: {error['message']} ({error['code']})")
            return {"error": error}

    def _ensure_entry_chunks(
        self,
        rec: JobRecord,
        names: list[str],
        listed: dict[str, dict[str, Any]],
        items: dict[str, list[SourceItem]],
    ) -> None:
        """Chunks in entry order: one per file (plain transfers; conversions add theirs as parts are
        written), and one marked with the error for an entry that could not be listed. Idempotent."""
        existing = {(c.entry, self.dest.relative(c.path)) for c in self.store.list_chunks(self.job_id)}
        for name in names:
            error = listed[name].get("error")
            if error is not None:
                if not any(entry == name for entry, _ in existing):
                    self._error_chunk(name, error)
                continue
            if rec.convert is not None:
                continue
            for item in items[name]:
                if (name, item.name) not in existing:
                    self._new_chunk(
                        path=item.name,
                        state=ChunkState.pending.value,
                        bytes=item.size,
                        content_type=item.content_type,
                        entry=name,
                    )

    def _stage_entry(
        self, rec: JobRecord, name: str, uri: str, items: list[SourceItem]
    ) -> dict[str, str] | None:
        """Stage every item of entry ``name``; returns None, or the entry's error (recorded)."""
        try:
            source = open_source(uri, source_roots=self.manager.source_roots)
            method = rec.method if rec.method in source.methods else source.default_method
            for item in items:
                self.control.check()
                if rec.convert is None:
                    chunk = next(
                        c
                        for c in self.store.list_chunks(self.job_id)
                        if c.entry == name and self.dest.relative(c.path) == item.name
                    )
                    self._transfer(source, method, item, chunk)
                else:
                    self._convert(source, rec, method, item, entry=name)
                self.manager._progress(self.job_id, force=True)
        except JobInterrupted:
            raise
        except Exception as exc:
            error = _error_of(exc)
            if error["code"] == "internal_error":
                log.error("staging job %s: entry %s failed: %s", self.job_id, name, redact_text(repr(exc)))
            self._entry_failed(name, error)
            return error
        return None

    def _error_chunk(self, name: str, error: dict[str, str]) -> None:
        """A pending chunk standing for manifest entry ``name``, carrying why it could not be staged."""
        self._new_chunk(
            path=name,
            state=ChunkState.pending.value,
            entry=name,
            error_code=error["code"],
            error_message=error["message"],
        )

    def _entry_failed(self, name: str, error: dict[str, str]) -> None:
        """Record the failure of entry ``name`` in the resume data and on its pending chunks."""
        with self._lock:
            self.resume["entries"][name]["error"] = error
            self._save_resume()
            pending = [
                c
                for c in self.store.list_chunks(self.job_id)
                if c.entry == name and c.state == ChunkState.pending.value
            ]
            for chunk in pending:
                self.store.update_chunk(chunk.id, error_code=error["code"], error_message=error["message"])
            if not pending:
                self._error_chunk(name, error)
        self._log("warning", f"entry {name} failed: {error['message']} ({error['code']}); the others go on")

    # -- the end --------------------------------------------------------------------------------------

    def _finish(
        self,
        rec: JobRecord,
        *,
        entries: list[str] | None = None,
        failures: dict[str, dict[str, str]] | None = None,
    ) -> None:
        """Write the manifest (last), apply the cleanup policy, end ``succeeded`` — or, when manifest
        entries failed, raise :class:`PartiallyStaged` (code ``partial``) after writing the manifest."""
        failures = failures or {}
        chunks = self.store.list_chunks(self.job_id)
        staged = [c for c in chunks if c.state in (ChunkState.ready.value, ChunkState.acked.value)]
        objects = []
        for c in staged:
            obj: dict[str, Any] = {
                "path": self.dest.relative(c.path),
                "size": c.bytes,
                "sha256": c.sha256,
                "rows": c.rows,
                "content_type": c.content_type,
            }
            if self.dest.remote:
                obj["uri"] = c.path
            if c.entry is not None:
                obj["entry"] = c.entry
            objects.append(obj)
        listing = None
        if entries is not None:
            shown = rec.entries or {}
            listing = [
                {
                    "name": name,
                    "source": shown.get(name, ""),
                    "paths": [o["path"] for o in objects if o.get("entry") == name],
                    "error": failures.get(name),
                }
                for name in entries
            ]
        existing = self.dest.read_manifest()
        if existing is None or existing.get("job_id") != self.job_id:
            self.dest.write_manifest(
                build_manifest(
                    job_id=self.job_id,
                    name=rec.name,
                    source=rec.source,
                    method=rec.method,
                    convert=rec.convert,
                    objects=objects,
                    created_at=rec.created_at,
                    finished_at=utcnow(),
                    entries=listing,
                ),
            )
        rows = sum(c.rows or 0 for c in staged)
        with self.live.lock:
            self.live.rows_done = rows
            if rec.bytes_total is not None and not failures:
                self.live.bytes_done = max(self.live.bytes_done, rec.bytes_total)
        self.store.update_job(
            self.job_id,
            bytes_done=self.live.bytes_done,
            rows_done=rows,
            chunks_done=len(staged),
            chunks_total=len(chunks),
        )
        if self.dest.remote:
            remove_tree_if_empty(self.dest.workdir, self.dest.workdir.parent.parent)
        total = sum(c.bytes or 0 for c in staged)
        if failures:
            assert entries is not None
            failed = ", ".join(f"{n} ({failures[n]['code']})" for n in entries if n in failures)
            message = (
                f"{len(entries) - len(failures)} of {len(entries)} entries staged "
                f"({len(staged)} chunk(s), {total} bytes; manifest written); failed: {failed}"
            )
            codes = {f["code"] for f in failures.values()}
            if len(failures) == len(entries) and len(codes) == 1:
                # Nothing staged, for one reason (a missing bucket, no network): that reason is the code.
                raise StagingError(message, code=codes.pop())
            raise PartiallyStaged(message)
        self._log("info", f"succeeded: {len(staged)} chunk(s), {total} bytes, {rows} rows; manifest written")
        self.manager.apply_cleanup_policy(self.job_id, JobState.succeeded)
        self.manager._set_state(self.job_id, JobState.succeeded)


def _strip_suffixes(name: str) -> str:
    lowered = name.lower()
    for suffix in (".gz", ".bz2", ".fz"):
        if lowered.endswith(suffix):
            name, lowered = name[: -len(suffix)], lowered[: -len(suffix)]
    return name.rsplit(".", 1)[0] if "." in name[1:] else name


__all__ = [
    "MANIFEST_CONCURRENCY",
    "JobControl",
    "JobRunner",
    "StagingError",
    "remove_job_output",
    "scratch_dir",
    "sha256_file",
]
