"""Progress of running jobs: live counters, rates over a sliding window, and chunk bookkeeping in memory."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jupyter_staging.engine.models import ChunkState

#: Minimum seconds between two persisted / announced progress updates of one job.
PROGRESS_INTERVAL = 0.25


class RateMeter:
    """Rate (bytes per second) over a sliding window of ``window`` seconds."""

    def __init__(self, window: float = 5.0) -> None:
        self.window = window
        self._samples: list[tuple[float, int]] = []

    def sample(self, total: int, now: float | None = None) -> float | None:
        now = time.monotonic() if now is None else now
        self._samples.append((now, total))
        while len(self._samples) > 2 and now - self._samples[0][0] > self.window:
            self._samples.pop(0)
        t0, b0 = self._samples[0]
        if now - t0 < 0.2:
            return None
        return max(0.0, (total - b0) / (now - t0))


class LiveProgress:
    """Counters a running job updates from its worker thread (bytes, rows) and their rate."""

    def __init__(self, bytes_done: int = 0, rows_done: int = 0) -> None:
        self.bytes_done = bytes_done
        self.rows_done = rows_done
        self.meter = RateMeter()
        self.rate: float | None = None
        self.last_flush = 0.0
        self.lock = threading.Lock()
        #: Task counts of a job on a distributed executor (``TaskCounts`` fields), None on threads.
        self.tasks: dict[str, Any] | None = None
        #: Bytes and rows the job's record showed as this run started (those of a paused or interrupted
        #: run): persisted counters never go below them while this run credits again what is on disk
        #: (finished files first, a part file once re-hashed, ranges in flight not at all).
        self.floor_bytes = 0
        self.floor_rows = 0

    def persisted(self) -> tuple[int, int]:
        """``(bytes_done, rows_done)`` to persist: the counters, never below this run's floor. Call with
        :attr:`lock` held."""
        return max(self.bytes_done, self.floor_bytes), max(self.rows_done, self.floor_rows)


#: Most chunk records written in one transaction by a :class:`ChunkLedger` batch.
CHUNK_BATCH = 1000


@dataclass
class ChunkBatch:
    """Chunk records a :class:`ChunkLedger` hands over for one transaction.

    ``new``: rows to insert by chunk id (column -> value), in order; ``updates``: ``{chunk id: {column:
    value}}`` applied after the inserts; ``folders``: folders to fsync before the transaction (they hold
    new hard links, symlinks or published copies, whose names must be durable before their chunks say
    ``ready``; a copy's bytes were fsynced when it was published);
    ``chunks_done``: ready or acked chunks of the job once the batch is written (None before the ledger
    was loaded); ``synced``: the chunks whose ready marks do not wait on ``folders`` (their names were
    fsynced as they were published)."""

    new: dict[str, dict[str, Any]] = field(default_factory=dict)
    updates: dict[str, dict[str, Any]] = field(default_factory=dict)
    folders: set[Path] = field(default_factory=set)
    chunks_done: int | None = None
    synced: set[str] = field(default_factory=set)

    @property
    def empty(self) -> bool:
        return not (self.new or self.updates or self.folders)


class ChunkLedger:
    """The chunk bookkeeping of one run, in memory, so that a chunk costs O(1) database work.

    :meth:`load` reads the job's chunk records once (the next free index, how many are done); then new
    chunks (:meth:`add`) and ready marks (:meth:`ready`) wait here until :meth:`take` hands them over as
    one :class:`ChunkBatch` — :meth:`due` says when: ``interval`` seconds after the last batch, or once
    ``batch`` records wait. A batch that could not be written is given back with :meth:`restore`.
    Thread-safe."""

    def __init__(self, interval: float = PROGRESS_INTERVAL, batch: int = CHUNK_BATCH) -> None:
        self.interval = interval
        self.batch = batch
        self.next_index = 0
        self.done = 0
        self.loaded = False
        self._pending = ChunkBatch()
        self._last = time.monotonic()
        self._lock = threading.Lock()

    def load(self, indices: list[int], done: int) -> None:
        """Start from the recorded chunks: their ``indices`` and how many are ready or acked."""
        with self._lock:
            self.next_index = max(indices, default=-1) + 1
            self.done = done
            self.loaded = True

    def add(self, job_id: str, fields: dict[str, Any], index: int | None = None) -> dict[str, Any]:
        """Queue a new chunk row of job ``job_id`` (``fields``: its columns but id and index) at
        ``index``, or at the next free index; returns the whole row (id ``<job id>-<index>``)."""
        with self._lock:
            if index is None:
                index = self.next_index
            self.next_index = max(self.next_index, index + 1)
            row = {**fields, "id": f"{job_id}-{index}", "job_id": job_id, "index": index}
            self._pending.new[row["id"]] = row
            return dict(row)

    def ready(
        self, chunk_id: str, fields: dict[str, Any], *, folder: Path | None = None, synced: bool = False
    ) -> None:
        """Queue ``fields`` (its ``state`` ``ready`` among them) for chunk ``chunk_id``, counted done;
        ``folder`` (holding its new link or published file) is fsynced before the batch is written.
        ``synced``: the chunk's name is durable already (its folder was fsynced as it was published), so
        a batch whose folders fail their fsync keeps this mark (:meth:`restore`)."""
        with self._lock:
            if synced:
                self._pending.synced.add(chunk_id)
            self.done += 1
            row = self._pending.new.get(chunk_id)
            if row is not None:
                row.update(fields)
            else:
                self._pending.updates.setdefault(chunk_id, {}).update(fields)
            if folder is not None:
                self._pending.folders.add(folder)

    def sync_folder(self, folder: Path) -> None:
        """fsync ``folder`` before the next batch is written."""
        with self._lock:
            self._pending.folders.add(folder)

    def due(self) -> bool:
        """True when records wait and the interval has passed (or a full batch waits)."""
        with self._lock:
            waiting = len(self._pending.new) + len(self._pending.updates)
            if not waiting and not self._pending.folders:
                return False
            return waiting >= self.batch or time.monotonic() - self._last >= self.interval

    def take(self) -> ChunkBatch:
        """Everything waiting, as one batch (the ledger starts a new one)."""
        with self._lock:
            batch, self._pending = self._pending, ChunkBatch()
            batch.chunks_done = self.done if self.loaded else None
            self._last = time.monotonic()
            return batch

    def restore(self, batch: ChunkBatch, *, durable: bool = True) -> None:
        """Give back a batch that was not written; it goes out with the next one (inserts first).

        ``durable=False``: the fsync of the batch's folders failed, so the names it would record ready may
        not survive a crash, and fsyncing them again proves nothing (Linux reports a write-back error once).
        Its ready marks are dropped, not given back: its new rows go back ``pending``, its updates and
        folders are forgotten, and the chunks are no longer counted done; but for the marks of chunks
        whose names were durable already (``synced`` in :meth:`ready`: a Parquet part another thread
        recorded), which go back as they were."""
        with self._lock:
            pending = self._pending
            new, updates = batch.new, batch.updates
            pending.synced |= batch.synced
            if not durable:
                ready = ChunkState.ready.value
                unready = [
                    row for row in new.values() if row.get("state") == ready and row["id"] not in batch.synced
                ]
                for row in unready:  # not published as far as anyone may know: no time recorded either
                    row["state"] = ChunkState.pending.value
                    row.pop("mtime_ns", None)
                marked = sum(
                    1
                    for chunk_id, fields in updates.items()
                    if fields.get("state") == ready and chunk_id not in batch.synced
                )
                self.done -= len(unready) + marked
                updates = {chunk_id: f for chunk_id, f in updates.items() if chunk_id in batch.synced}
            pending.new = {**new, **pending.new}
            for chunk_id, fields in updates.items():
                pending.updates[chunk_id] = {**fields, **pending.updates.get(chunk_id, {})}
            if durable:
                pending.folders |= batch.folders
