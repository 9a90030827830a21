"""The single-file entries of a manifest on a Dask cluster, in groups.

Each entry of a manifest is staged on its own (:meth:`ManifestStager._stage_entry`): on Dask, a batch of
tasks per entry, ``concurrent_items`` entries at a time. For a manifest of many single small files (a MAST
download list: a local path or a URL each) that made one task of one file each, at most
``concurrent_items`` at once: 1,000 local files of 64 KiB staged at 43 files/s on two local workers (23 s,
15 CPU-s of the server), seven times slower than the server's own threads; in groups, 3.4-3.7 s (67 tasks,
2.2 CPU-s of the server; bench/README.md). Here the entries whose one file is fetched (a copy or a
download into a shared folder: :meth:`SpreadStager._executor_for`) and small (:meth:`SpreadStager._groupable`)
go together, in one batch of tasks of several files each (:func:`~jupyter_staging.engine.itemtasks.
fetch_entries`, grouped as a folder's small files are: :class:`~jupyter_staging.engine.itemtasks.Grouping`),
each file from its own source, verified against its own expected checksum, published at its own name.
Entries with more files, converted or expanded ones, and links stay on the per-entry path.

Every entry still ends on its own: one settled without a fetch (done by an earlier run, reused, recovered)
is recorded as on the per-entry path; one whose file fails with an error that would only repeat
(``checksum_mismatch``, ``source_changed``) fails alone, with that code, the rest of its group going on; a
group task that fails otherwise (after Dask ran it again: its files published are taken back) is split
into tasks of one file each, so that only the entry at fault fails, with the error it has on its own.
A pause, a cancel or a cluster lost stops the whole batch, as any batch of the job.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

from jupyter_staging.engine.executors import DaskExecutor
from jupyter_staging.engine.itemtasks import Grouping, fetch_entries, files_per_group
from jupyter_staging.engine.models import ChunkState
from jupyter_staging.engine.schema import JobChunk
from jupyter_staging.engine.spread import SpreadStager
from jupyter_staging.engine.store import JobRecord
from jupyter_staging.engine.taskoutcomes import BatchFailure, TaskFailed
from jupyter_staging.engine.taskset import TaskBatch
from jupyter_staging.errors import ClusterUnavailable, JobInterrupted
from jupyter_staging.safety.checksums import second_algorithm
from jupyter_staging.sources.base import Source, SourceItem
from jupyter_staging.sources.registry import open_source

#: The key of the grouped entries among the entries staged in parallel (NUL: no entry's name has one).
GROUPED = "\x00grouped"


class Planned(NamedTuple):
    """A single-file entry that may be staged in a group: its name, source, method, file and chunk."""

    name: str
    source: Source
    method: str
    item: SourceItem
    chunk: JobChunk


class Fetching(NamedTuple):
    """A grouped entry's file to fetch: its entry, where it goes, and the checksums to verify."""

    entry: Planned
    final: Path
    checksums: dict[str, str]


Outcome = dict[str, dict[str, str] | None]


class EntrySpreadStager(SpreadStager):
    """Stages the single small files of a manifest's entries in groups on a :class:`DaskExecutor`; the
    rest, and everything on other executors, as :class:`SpreadStager` does."""

    def _stage_entries(
        self,
        rec: JobRecord,
        names: list[str],
        entries: dict[str, str],
        items: dict[str, list[SourceItem]],
        chunks: dict[tuple[str | None, str], JobChunk],
        *,
        plain: bool,
    ) -> Outcome:
        executor = self.host.executor
        if not plain or not isinstance(executor, DaskExecutor):
            return super()._stage_entries(rec, names, entries, items, chunks, plain=plain)
        planned = self._plan_groups(rec, names, entries, items, chunks, executor)
        if not planned:
            return super()._stage_entries(rec, names, entries, items, chunks, plain=plain)

        def work(name: str) -> Outcome:
            if name == GROUPED:
                return self._stage_grouped(executor, planned)
            return {name: self._stage_entry(rec, name, entries[name], items[name], chunks)}

        rest = [n for n in names if n not in planned]
        outcome: Outcome = {}
        for one in self._parallel([GROUPED, *rest], work, self._items_at_once()).values():
            outcome.update(one)
        return outcome

    def _plan_groups(
        self,
        rec: JobRecord,
        names: list[str],
        entries: dict[str, str],
        items: dict[str, list[SourceItem]],
        chunks: dict[tuple[str | None, str], JobChunk],
        executor: DaskExecutor,
    ) -> dict[str, Planned]:
        """The entries of ``names`` that go in groups: one file each, fetched as a Dask task, small. An
        entry whose source does not open stays out (its own path records why it failed)."""
        planned: dict[str, Planned] = {}
        for name in names:
            if len(items[name]) != 1:
                continue
            item = items[name][0]
            try:
                source = open_source(entries[name], source_roots=self.host.source_roots)
            except Exception:  # noqa: S112 - the entry's own path fails it, with its code
                continue
            method = rec.method if rec.method in source.methods else source.default_method
            if self._executor_for(method) is not None and self._groupable(executor, item):
                planned[name] = Planned(name, source, method, item, chunks[(name, item.name)])
        return planned

    def _stage_grouped(self, executor: DaskExecutor, planned: dict[str, Planned]) -> Outcome:
        """Stage the files of the ``planned`` entries in groups, in one isolated batch; ``{name: None or
        the entry's error (recorded)}``. Raises :class:`JobInterrupted` and :class:`ClusterUnavailable`."""
        outcome: Outcome = dict.fromkeys(planned)
        try:
            with self._tasks(executor).batch(isolated=True) as tasks:
                fetching = [f for p in planned.values() if (f := self._before_fetch(p, outcome)) is not None]
                numbers = itertools.count()
                groups: dict[int, list[Fetching]] = {}
                grouping: Grouping[Fetching] = Grouping(files_per_group(len(fetching)))
                for one in fetching:
                    full = grouping.add(one, one.entry.item.size or 0)
                    if full is not None:
                        self._submit_entries(tasks, full, groups, next(numbers))
                rest = grouping.drain()
                if rest is not None:
                    self._submit_entries(tasks, rest, groups, next(numbers))
                if fetching:
                    self._log(
                        "info",
                        f"{len(fetching)} single-file entries as {len(groups)} Dask tasks of up to "
                        f"{grouping.per_group} files",
                    )
                self._collect(tasks, groups, numbers, outcome)
        finally:
            self._log_recovered()
        return outcome

    def _before_fetch(self, entry: Planned, outcome: Outcome) -> Fetching | None:
        """What the per-entry path does before a task (:meth:`SpreadStager._transfer_all`): a done chunk
        counted, a file settled without a fetch recorded (None for both), a source changed since the
        listing relisted. Returns the file to fetch; an error is the entry's (recorded in ``outcome``)."""
        self.control.check()
        name, source, method, item, chunk = entry
        if chunk.state != ChunkState.pending.value:
            self.control.add_bytes(chunk.bytes or 0)
            return None
        final = self.dest.workdir / item.name
        try:
            done = self._stage_without_fetch(
                source, method, item, final, recovering=self.recovering, sync_folder=False
            )
            if done is not None:
                self._item_done(item, chunk, final, done)
                return None
            if source.revalidate(item):  # changed since the listing: the workers stage it as it is now
                self._relist(item, item.validator)
            return Fetching(entry, final, self._expected_checksums(item))
        except (JobInterrupted, ClusterUnavailable):
            raise
        except Exception as exc:
            outcome[name] = self._entry_error(name, exc)
            return None

    def _submit_entries(
        self, tasks: TaskBatch, files: list[Fetching], groups: dict[int, list[Fetching]], number: int
    ) -> None:
        """Submit one :func:`fetch_entries` task for ``files``; its result comes back tagged
        ``("entries", number)``."""
        groups[number] = files
        tasks.submit(
            fetch_entries,
            tasks.ctx,
            self.host.source_roots,
            [
                (
                    f.entry.source.uri,
                    (f.entry.item, self._rel(f.final), f.checksums, second_algorithm(f.checksums)),
                )
                for f in files
            ],
            streams=self.host.streams_per_file,
            tag=("entries", number),
        )

    def _collect(
        self, tasks: TaskBatch, groups: dict[int, list[Fetching]], numbers: Iterator[int], outcome: Outcome
    ) -> None:
        """Record each group's files as its task ends; a failed group of several files is submitted again
        as tasks of one file each (its progress taken back: they count their files again)."""
        for (_, number), result in tasks.results():
            files = groups.pop(number)
            if isinstance(result, BatchFailure) and len(files) > 1:
                tasks.job.take_back(result.key)
                self._log(
                    "warning",
                    f"a Dask task of {len(files)} entries failed ({type(result.error).__name__}): each of "
                    "them is staged again as a task of its own",
                )
                for one in files:
                    self._submit_entries(tasks, [one], groups, next(numbers))
                continue
            answers = [result] if isinstance(result, BatchFailure) else result
            for one, answer in zip(files, answers, strict=True):
                self._file_done(one, answer, outcome)

    def _file_done(self, one: Fetching, answer: Any, outcome: Outcome) -> None:
        """Record the fetched file of one entry (``(size, sha256)``), or the entry's failure."""
        name, _, _, item, chunk = one.entry
        if isinstance(answer, (TaskFailed, BatchFailure)):
            outcome[name] = self._entry_error(name, answer.error)
            return
        try:
            self._item_done(item, chunk, one.final, answer)
        except (JobInterrupted, ClusterUnavailable):
            raise
        except Exception as exc:
            outcome[name] = self._entry_error(name, exc)
