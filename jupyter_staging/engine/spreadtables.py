"""Table conversions spread over a Dask cluster: the Parquet parts of one table written by several tasks.

A FITS binary table (uncompressed) is cut by rows, from its header alone; a plain CSV / TSV by line-aligned
byte ranges, found by tasks too (rows counted per span, then the byte offset of every part's first row:
:mod:`jupyter_staging.formats.split`). Each task converts a group of consecutive parts of about
``range_bytes`` of source (:func:`~jupyter_staging.engine.tasks.convert_range`), so the folder ends up with
exactly the files one conversion on the server's threads writes: same rows in the same order, same schema
and metadata, same part boundaries for the same ``chunk_rows``, byte for byte. The runner records the parts
as chunks in part order as the tasks finish.

What is not split (compressed files, VOTable, ECSV, ragged or quoted-newline CSV, one part's worth of
rows) and tables the workers cannot see in place are converted on the server's threads as before.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jupyter_staging.engine.executors import DaskExecutor
from jupyter_staging.engine.spreadentries import EntrySpreadStager
from jupyter_staging.engine.tasks import convert_range, source_visible
from jupyter_staging.engine.taskset import TaskBatch
from jupyter_staging.formats.base import ChunkInfo
from jupyter_staging.formats.detect import detect_format
from jupyter_staging.formats.split import (
    NotSplittable,
    Task,
    count_csv_rows,
    csv_spans,
    plan,
    span_part_offsets,
    splittable,
    tasks_from_offsets,
)


@dataclass
class RangePlan:
    """How one table is cut: the byte ``offsets`` of every part's first row and the data's ``end`` (CSV /
    TSV), or the row-range ``tasks`` (FITS)."""

    fmt: str
    task_bytes: int
    offsets: list[int] | None = None
    end: int = 0
    tasks: list[Task] | None = None

    @property
    def parts(self) -> int:
        """How many parts the conversion writes."""
        if self.offsets is not None:
            return len(self.offsets)
        return self.tasks[-1].stop_index if self.tasks else 0

    def after(self, existing: int) -> list[Task]:
        """The tasks writing parts ``existing ..`` (the earlier ones are recorded already)."""
        if self.offsets is not None:
            rest = tasks_from_offsets(self.offsets[existing:], self.end, self.task_bytes)
            return [Task(t.start_index + existing, t.stop_index + existing, t.start_offset) for t in rest]
        return [
            Task(max(t.start_index, existing), t.stop_index, None)
            for t in self.tasks or []
            if t.stop_index > existing
        ]


class TableSpreadStager(EntrySpreadStager):
    """Converts splittable tables as Dask tasks (part ranges); everything else as
    :class:`~jupyter_staging.engine.spreadentries.EntrySpreadStager`."""

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
        executor = None if self.dest.remote else self._executor_for("copy")
        # Workers are other processes: they open the table by its own path (``local`` may be a path
        # through this process's descriptors), so a folder swapped meanwhile is not caught there.
        shared = listed or local
        ranges = self._plan_ranges(executor, shared, opts) if executor is not None else None
        if executor is None or ranges is None:
            return super()._convert_file(
                local, name, opts, entry, counted=counted, last_with_table=last_with_table
            )
        out_rel = self._output_folder(name)
        out_dir = self.dest.workdir / out_rel
        existing = len(self._recorded_parts(name, out_rel)[0])
        keep = sorted(self._foreign_parts(out_rel, out_dir))
        tasks = ranges.after(existing)
        if len(self.resume.get("items", [])) == 1:
            self.store.update_job(self.job_id, load_resume=False, chunks_total=ranges.parts)
        options = {
            "chunk_rows": int(opts.get("chunk_rows") or 100_000),
            "compression": str(opts.get("compression") or "zstd"),
            "hdu": opts.get("hdu"),
            "fmt": ranges.fmt,
            "encoding": opts.get("encoding"),
        }
        stops = {t.start_index: t.stop_index for t in tasks}
        with self._tasks(executor).batch() as batch:
            for t in tasks:
                batch.submit(
                    convert_range,
                    batch.ctx,
                    str(shared),
                    self._rel(out_dir),  # tasks resolve folders against the root, not the destination
                    options,
                    t.start_index,
                    t.stop_index,
                    t.start_offset,
                    count_bytes=not counted,
                    keep=keep,
                    tag=t.start_index,
                )
            self._log("info", f"{name}: {len(tasks)} part ranges of {ranges.parts} parts as Dask tasks")
            finished: dict[int, list[ChunkInfo]] = {}
            following = tasks[0].start_index if tasks else 0
            for start, infos in batch.results():
                finished[start] = infos
                while following in finished:  # record parts in part order
                    for info in finished.pop(following):
                        self._record_part(out_dir, out_rel, info, entry, name)
                    following = stops[following]
        return out_rel

    def _plan_ranges(self, executor: DaskExecutor, local: Path, opts: dict[str, Any]) -> RangePlan | None:
        """How to cut table ``local`` into part ranges, or None to convert it on the server's threads."""
        fmt = detect_format(local)
        hdu = opts.get("hdu")
        chunk_rows = int(opts.get("chunk_rows") or 100_000)
        if fmt not in ("fits", "csv", "tsv") or not splittable(local, fmt, hdu):
            return None
        tasks = self._tasks(executor)
        with tasks.batch() as batch:
            if not self._workers_see(batch, local):
                self._log("info", f"{local.name}: the Dask workers cannot read it in place; converted here")
                return None
            try:
                if fmt == "fits":
                    found = plan(local, fmt, hdu, chunk_rows=chunk_rows, task_bytes=executor.range_bytes)
                    if found is None or len(found) < 2:
                        return None
                    return RangePlan(fmt, executor.range_bytes, tasks=found)
                return self._csv_plan(batch, local, fmt, chunk_rows, executor.range_bytes)
            except NotSplittable:
                return None

    def _csv_plan(
        self, batch: TaskBatch, local: Path, fmt: str, chunk_rows: int, task_bytes: int
    ) -> RangePlan | None:
        """Rows counted per span, then every part's first byte, by tasks (one per span each)."""
        spans = csv_spans(local, task_bytes, fmt)
        if len(spans) < 2:
            return None
        for index, (start, end) in enumerate(spans):
            batch.submit(count_csv_rows, local, start, end, fmt, tag=index)
        counts = dict(batch.results())
        firsts = list(itertools.accumulate([0] + [counts[i] for i in range(len(spans) - 1)]))
        for index, ((start, end), first) in enumerate(zip(spans, firsts, strict=True)):
            batch.submit(span_part_offsets, local, start, end, first, chunk_rows, tag=index)
        found = dict(batch.results())
        offsets = [offset for i in range(len(spans)) for offset in found[i]] or [spans[0][0]]
        if len(offsets) < 2:
            return None
        return RangePlan(fmt, task_bytes, offsets=offsets, end=spans[-1][1])

    def _workers_see(self, batch: TaskBatch, local: Path) -> bool:
        """Whether a worker finds ``local`` as this server does (same size and modification time)."""
        st = local.stat()
        batch.submit(
            source_visible, str(local), st.st_size, st.st_mtime_ns, tag="stat", retries=0, counted=False
        )
        return bool(next((seen for _, seen in batch.results()), False))
