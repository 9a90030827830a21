"""Running one staging job: list the source, stage each item as a chunk, convert tables, write the manifest.

A :class:`JobRunner` runs on an executor thread. It persists each chunk as soon as its file is published,
so a job interrupted by a pause, a shutdown or a crash continues from its finished chunks and from the
bytes already in its ``.part`` files.
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
from dataclasses import asdict
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from .errors import (
    DestinationExists,
    JobInterrupted,
    StagingError,
    TransferFailed,
)
from .manifest import MANIFEST_NAME, build_manifest, read_manifest, write_manifest
from .models import ChunkState, JobState
from .paths import check_output_name
from .sources import Source, SourceItem, open_source
from .store import ChunkRecord, JobRecord, utcnow
from .transfer import BLOCK_SIZE, PART_SUFFIX, JobControl, PartFile, part_path, publish

if TYPE_CHECKING:
    from .manager import LiveProgress, StagingManager

SCRATCH_PREFIX = ".staging-"


def scratch_dir(dest: Path, job_id: str) -> Path:
    """Hidden folder inside the destination where remote tables are downloaded before conversion."""
    return dest / f"{SCRATCH_PREFIX}{job_id}"


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes, read in :data:`~jupyter_staging.transfer.BLOCK_SIZE` blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(BLOCK_SIZE):
            digest.update(block)
    return digest.hexdigest()


def _within(path: Path, root: Path) -> bool:
    try:
        path.relative_to(root)
    except ValueError:
        return False
    return True


def remove_job_output(manager: StagingManager, rec: JobRecord, *, keep_ready: bool) -> int:
    """Delete what job ``rec`` wrote below its destination: ``.part`` files, the scratch folder, and
    unless ``keep_ready`` its published chunks and manifest. Returns the number of files removed.

    Only paths inside the job's destination are touched, and a symlink is removed, never followed.
    """
    dest = (manager.root_dir / rec.destination).resolve()
    if not _within(dest, manager.root_dir) or dest == manager.root_dir:
        return 0
    removed = 0

    def unlink(path: Path) -> None:
        nonlocal removed
        if not _within(path.parent.resolve(), dest):
            return
        try:
            if path.is_symlink() or path.is_file():
                path.unlink()
                removed += 1
        except FileNotFoundError:
            pass

    folders: set[Path] = set()
    for chunk in manager.store.list_chunks(rec.id):
        path = dest / chunk.path
        folders.add(path.parent)
        unlink(part_path(path))
        if not keep_ready:
            unlink(path)
    for item in (rec.resume or {}).get("items", []):
        path = dest / item["name"]
        folders.add(path.parent)
        unlink(part_path(path))
    for out_dir in (rec.resume or {}).get("convert_dirs", []):
        folder = dest / out_dir
        folders.add(folder)
        if folder.is_dir() and not folder.is_symlink():
            for part in folder.glob(f"*{PART_SUFFIX}"):
                unlink(part)
    scratch = scratch_dir(dest, rec.id)
    if scratch.is_dir() and not scratch.is_symlink():
        shutil.rmtree(scratch, ignore_errors=True)
    if not keep_ready:
        manifest = read_manifest(dest) if (dest / MANIFEST_NAME).is_file() else None
        if manifest is not None and manifest.get("job_id") == rec.id:
            unlink(dest / MANIFEST_NAME)
    from .manager import remove_tree_if_empty

    for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):
        if _within(folder.resolve(), dest):
            remove_tree_if_empty(folder, dest.parent)
    remove_tree_if_empty(dest, dest.parent)
    return removed


class JobRunner:
    """Runs job ``job_id`` of ``manager`` once (from queued to a final or paused state)."""

    def __init__(self, manager: StagingManager, job_id: str) -> None:
        from .manager import LiveProgress

        self.manager = manager
        self.store = manager.store
        self.job_id = job_id
        self.live: LiveProgress = LiveProgress()
        self.control = JobControl(on_bytes=self._on_bytes, on_rows=self._on_rows, log=self._log)
        self.recovering = False

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
                    remove_job_output(m, rec, keep_ready=True)
                m._fail(self.job_id, exc)
            except Exception:  # the database itself failed; nothing more we can record
                import logging

                logging.getLogger(__name__).exception("could not record failure of job %s", self.job_id)
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
        source = open_source(rec.source, source_roots=m.source_roots)
        resume: dict[str, Any] = dict(rec.resume or {})
        resume["attempts"] = int(resume.get("attempts", 0)) + 1
        self.recovering = resume["attempts"] > 1
        rec = self.store.update_job(self.job_id, resume=resume) or rec
        if "items" in resume:
            items = [SourceItem(**d) for d in resume["items"]]
        else:
            items = source.list_items()
            for item in items:
                item.name = check_output_name(item.name)
            resume["items"] = [asdict(i) for i in items]
            total = None if any(i.size is None for i in items) else sum(i.size or 0 for i in items)
            fields: dict[str, Any] = {"resume": resume, "bytes_total": total}
            if rec.convert is None:
                fields["chunks_total"] = len(items)
            rec = self.store.update_job(self.job_id, **fields) or rec
            self._log("info", f"{len(items)} file(s) to stage, {total if total is not None else '?'} bytes")
        dest = m.root_dir / rec.destination
        dest.mkdir(parents=True, exist_ok=True)
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
        self._count_done(chunks)
        for index, item in enumerate(items):
            self.control.check()
            if rec.convert is None:
                self._transfer(source, rec, item, dest, chunks[index])
            else:
                self._convert(source, rec, resume, item, dest)
            self.manager._progress(self.job_id, force=True)
        self.control.check()
        self._finish(rec, dest)

    def _count_done(self, chunks: dict[int, ChunkRecord]) -> None:
        done = [c for c in chunks.values() if c.state in (ChunkState.ready.value, ChunkState.acked.value)]
        with self.live.lock:
            self.live.bytes_done = 0
            self.live.rows_done = sum(c.rows or 0 for c in done)
        self.store.update_job(self.job_id, chunks_done=len(done))

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

    def _transfer(self, source: Source, rec: JobRecord, item: SourceItem, dest: Path, chunk: ChunkRecord) -> None:
        if chunk.state != ChunkState.pending.value:
            self.control.add_bytes(chunk.bytes or 0)
            return
        final = dest / item.name
        size, sha = self._stage_file(source, rec.method, item, final, recovering=self.recovering)
        self._chunk_ready(chunk, bytes=size, sha256=sha)

    def _stage_file(
        self, source: Source, method: str, item: SourceItem, final: Path, *, recovering: bool
    ) -> tuple[int, str]:
        """Bring one item to ``final``; returns ``(size_bytes, sha256_hex)``."""
        final.parent.mkdir(parents=True, exist_ok=True)
        if final.exists() and not part_path(final).exists() and recovering:
            # Published by this job just before the process died, before the chunk was recorded.
            if final.is_file() and not final.is_symlink() and final.stat().st_size == item.size:
                self._log("info", f"{item.name}: already complete from the previous run")
                self.control.add_bytes(item.size or 0)
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
            raise DestinationExists(f"{final.name} already exists in the destination; not overwritten") from None
        except OSError as exc:
            code = "hardlink_failed" if method == "hardlink" else "symlink_failed"
            hint = " (source and destination must be on the same file system)" if exc.errno == 18 else ""
            raise TransferFailed(f"cannot {method} {item.name}: {exc.strerror}{hint}", code=code) from None
        size = src.stat().st_size
        self.control.add_bytes(size)
        return size, sha256_file(src)

    # -- conversions --------------------------------------------------------------------------------

    def _convert(self, source: Source, rec: JobRecord, resume: dict[str, Any], item: SourceItem, dest: Path) -> None:
        from .convert import convert_to_parquet, detect_format, is_table

        opts = rec.convert or {}
        done_items = resume.setdefault("converted", [])
        if item.name in done_items:
            return
        if any(c.path == item.name for c in self.store.list_chunks(self.job_id)):
            self._convert_passthrough(source, rec, item, dest)  # staged as-is in an earlier run
            return
        local = source.local_path(item)
        downloaded = None
        if local is None:
            # Remote: download first (resumable), then decide from the bytes whether it is a table.
            local = downloaded = scratch_dir(dest, self.job_id) / item.name
            if not local.exists():
                self._stage_file(source, "download", item, local, recovering=False)
            else:
                self.control.add_bytes(item.size or 0)
        fmt = detect_format(local)
        if fmt is None or fmt == "parquet" or (opts.get("hdu") is None and not is_table(local)):
            self._convert_passthrough(source, rec, item, dest, downloaded=downloaded)
            return
        if fmt == "fits" and len(resume.get("items", [])) == 1:
            self._expect_chunks(local, opts)
        stem = PurePosixPath(item.name)
        out_rel = (stem.parent / f"{_strip_suffixes(stem.name)}.parquet").as_posix()
        out_rel = check_output_name(out_rel)
        if out_rel not in resume.setdefault("convert_dirs", []):
            resume["convert_dirs"].append(out_rel)
            self.store.update_job(self.job_id, resume=resume)
        out_dir = dest / out_rel
        existing = [
            c for c in self.store.list_chunks(self.job_id) if c.path.startswith(out_rel + "/")
        ]
        next_index = len(self.store.list_chunks(self.job_id))

        def on_chunk(info: Any) -> None:
            nonlocal next_index
            chunk = ChunkRecord(
                id=f"{self.job_id}-{next_index}",
                job_id=self.job_id,
                index=next_index,
                path=f"{out_rel}/{info.name}",
                state=ChunkState.pending.value,
                rows=info.rows,
                bytes=info.bytes,
                sha256=info.sha256,
                content_type="application/vnd.apache.parquet",
            )
            next_index += 1
            self.store.upsert_chunk(chunk)
            self._chunk_ready(chunk)

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
        done_items.append(item.name)
        self.store.update_job(self.job_id, resume=resume)
        scratch = scratch_dir(dest, self.job_id)
        if scratch.exists():
            shutil.rmtree(scratch, ignore_errors=True)
        self._log("info", f"{item.name}: converted to {out_rel}")

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
        self, source: Source, rec: JobRecord, item: SourceItem, dest: Path, downloaded: Path | None = None
    ) -> None:
        """Stage a file that is not a table (an image, a Parquet file) as it is, as one chunk; a file
        ``downloaded`` to the scratch folder already is moved into place rather than fetched again."""
        chunks = self.store.list_chunks(self.job_id)
        for chunk in chunks:
            if chunk.path == item.name:
                if chunk.state != ChunkState.pending.value:
                    self.control.add_bytes(chunk.bytes or 0)
                    return
                break
        else:
            chunk = self.store.upsert_chunk(
                ChunkRecord(
                    id=f"{self.job_id}-{len(chunks)}",
                    job_id=self.job_id,
                    index=len(chunks),
                    path=item.name,
                    state=ChunkState.pending.value,
                    bytes=item.size,
                    content_type=item.content_type,
                )
            )
        self._log("info", f"{item.name}: not a table; staged as it is")
        final = dest / item.name
        if downloaded is not None:
            final.parent.mkdir(parents=True, exist_ok=True)
            publish(downloaded, final)
            size, sha = final.stat().st_size, sha256_file(final)
        else:
            method = "copy" if rec.method == "copy" else "download"
            size, sha = self._stage_file(source, method, item, final, recovering=self.recovering)
        self._chunk_ready(chunk, bytes=size, sha256=sha)

    # -- the end --------------------------------------------------------------------------------------

    def _finish(self, rec: JobRecord, dest: Path) -> None:
        chunks = self.store.list_chunks(self.job_id)
        objects = [
            {
                "path": c.path,
                "size": c.bytes,
                "sha256": c.sha256,
                "rows": c.rows,
                "content_type": c.content_type,
            }
            for c in chunks
        ]
        existing = read_manifest(dest)
        if existing is None or existing.get("job_id") != self.job_id:
            write_manifest(
                dest,
                build_manifest(
                    job_id=self.job_id,
                    name=rec.name,
                    source=rec.source,
                    method=rec.method,
                    convert=rec.convert,
                    objects=objects,
                    created_at=rec.created_at,
                    finished_at=utcnow(),
                ),
            )
        rows = sum(c.rows or 0 for c in chunks)
        with self.live.lock:
            self.live.rows_done = rows
            if rec.bytes_total is not None:
                self.live.bytes_done = max(self.live.bytes_done, rec.bytes_total)
        self.store.update_job(
            self.job_id,
            bytes_done=self.live.bytes_done,
            rows_done=rows,
            chunks_done=len(chunks),
            chunks_total=len(chunks),
        )
        self.manager._set_state(self.job_id, JobState.succeeded)
        total = sum(c.bytes or 0 for c in chunks)
        self._log("info", f"succeeded: {len(chunks)} chunk(s), {total} bytes, {rows} rows; manifest written")
        self.manager.apply_cleanup_policy(self.job_id)


def _strip_suffixes(name: str) -> str:
    lowered = name.lower()
    for suffix in (".gz", ".bz2", ".fz"):
        if lowered.endswith(suffix):
            name, lowered = name[: -len(suffix)], lowered[: -len(suffix)]
    return name.rsplit(".", 1)[0] if "." in name[1:] else name


__all__ = ["JobRunner", "StagingError", "remove_job_output", "scratch_dir", "sha256_file"]
