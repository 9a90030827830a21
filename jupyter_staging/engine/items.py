"""Staging the items of a job: chunk bookkeeping and the transfer of one file (copy, download, link).

:class:`ItemStager` is the base of :class:`~jupyter_staging.engine.runner.JobRunner`: it holds the run's
state (its :class:`~jupyter_staging.engine.host.JobHost`, control, live progress and resume data) and
brings one :class:`~jupyter_staging.sources.base.SourceItem` to a published, verified chunk.
"""

from __future__ import annotations

import copy
import hashlib
import os
import threading
from dataclasses import asdict
from pathlib import Path
from typing import Any

from jupyter_staging.destinations.base import Destination
from jupyter_staging.engine.host import JobHost
from jupyter_staging.engine.models import ChunkState
from jupyter_staging.engine.progress import LiveProgress
from jupyter_staging.engine.store import ChunkRecord
from jupyter_staging.errors import DestinationExists, JobInterrupted, TransferFailed
from jupyter_staging.safety.control import JobControl
from jupyter_staging.safety.partfile import BLOCK_SIZE, PartFile, part_path
from jupyter_staging.safety.redact import redact_url
from jupyter_staging.sources.base import Source, SourceItem


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes, read in :data:`~jupyter_staging.safety.partfile.BLOCK_SIZE` blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(BLOCK_SIZE):
            digest.update(block)
    return digest.hexdigest()


class ItemStager:
    """Runs job ``job_id`` of ``host``: the state of one run and the staging of single items."""

    def __init__(self, host: JobHost, job_id: str) -> None:
        self.host = host
        self.store = host.store
        self.job_id = job_id
        self.live = LiveProgress()
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
        self.host.report_progress(self.job_id)

    def _on_rows(self, n: int) -> None:
        with self.live.lock:
            self.live.rows_done += n
        self.host.report_progress(self.job_id)

    def _log(self, level: str, message: str) -> None:
        self.host.log_event(self.job_id, level, message)

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
            data["sealed"] = self.host.secrets.seal(item.locator)
        return data

    def _load_item(self, data: dict[str, Any]) -> SourceItem:
        data = dict(data)
        sealed = data.pop("sealed", None)
        if sealed:
            data["locator"] = self.host.secrets.open(sealed)
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
            self.host.announce(rec)

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
