"""A job's work spread over a Dask cluster (:class:`~jupyter_staging.engine.executors.DaskExecutor`).

On a Dask executor the runner stays in the server and keeps every decision and all bookkeeping: what is
already done, reused or linked is settled here as on threads (no task), and only reading the source's bytes
becomes tasks (:mod:`jupyter_staging.engine.tasks`): one per file of a folder / prefix / manifest, or, for a
local file larger than ``range_bytes``, one per byte range plus one that hashes, verifies and publishes the
assembled file. The small files of a big folder go as tasks of several files each
(:mod:`jupyter_staging.engine.itemtasks`: a task's own cost is most of a small file's). Results come back
in the order tasks finish and are recorded as chunks as on threads.

Before the first task, a worker writes a probe file into the destination folder and the server reads it
back: a destination the workers do not share fails the job with ``destination_not_shared`` before a byte
moves. For an object-store destination no folder is shared: each task fetches into a scratch folder of its
worker and uploads the file itself (verified, as the server would), with the credentials of the worker's
environment. Hard links and symlinks stay on the server's threads (the job log says so); so do archives and
conversions that cannot be split or whose output goes to object storage.
"""

from __future__ import annotations

import os
import secrets
from contextlib import suppress
from pathlib import Path
from typing import Any

from jupyter_staging.engine.entries import ManifestStager
from jupyter_staging.engine.executors import DaskExecutor
from jupyter_staging.engine.folders import PARTS_TAGGED, PUBLISHED_TAGS, UNTAGGED_PARTS_HOSTS, parts_tagged
from jupyter_staging.engine.itemtasks import (
    GROUPED_BYTES,
    GroupEntry,
    Grouping,
    fetch_item,
    fetch_items,
    files_per_group,
)
from jupyter_staging.engine.models import ChunkState
from jupyter_staging.engine.probe import probe_folder, read_probe
from jupyter_staging.engine.ranges import byte_ranges
from jupyter_staging.engine.schema import JobChunk
from jupyter_staging.engine.tasks import (
    TaskContext,
    fetch_item_to_store,
    fetch_range,
    finish_ranges,
)
from jupyter_staging.engine.taskset import JobTasks, TaskBatch
from jupyter_staging.errors import DestinationNotShared, JobInterrupted, SourceChanged, StagingError
from jupyter_staging.safety.checksums import second_algorithm
from jupyter_staging.safety.dirfd import write_refused
from jupyter_staging.safety.ownership import mark_ranges_part
from jupyter_staging.sources.base import Source, SourceItem

#: Methods whose bytes are read from the source, hence worth a task.
FETCHING = ("copy", "download")


class SpreadStager(ManifestStager):
    """Stages a job's files as tasks on a :class:`DaskExecutor`'s cluster; on any other executor (and for
    what does not spread) exactly as :class:`ManifestStager`."""

    _job_tasks: JobTasks | None = None
    _said_local: bool = False

    def _executor_for(self, method: str) -> DaskExecutor | None:
        """The Dask executor when this transfer runs as tasks, else None (logged once per run)."""
        executor = self.host.executor
        if not isinstance(executor, DaskExecutor):
            return None
        if method not in FETCHING or (not self.dest.remote and self.dest.confinement_root is None):
            if not self._said_local:
                self._said_local = True
                self._log("info", f"method {method}: staged on the server's own threads, not as Dask tasks")
            return None
        return executor

    def prepare_tasks(self, method: str) -> None:
        """Before any item: on a Dask executor, make sure the workers see the destination (the probe);
        raises :class:`DestinationNotShared` otherwise. Nothing on other executors."""
        executor = self._executor_for(method)
        if executor is not None:
            self._tasks(executor)

    def _transfer_all(self, source: Source, method: str, work: list[tuple[SourceItem, JobChunk]]) -> None:
        executor = self._executor_for(method)
        if executor is None:
            super()._transfer_all(source, method, work)
            return
        with self._tasks(executor).batch() as tasks:
            waiting: dict[int, tuple[SourceItem, JobChunk, Path]] = {}
            ranges: dict[int, int] = {}
            tokens: dict[int, str | None] = {}  # the token of each file's part (mark_ranges_part)
            small: list[int] = []  # files that may go in groups, once their count is known
            for index, (item, chunk) in enumerate(work):
                self.control.check()
                if chunk.state != ChunkState.pending.value:
                    self.control.add_bytes(chunk.bytes or 0)
                    continue
                final = self.dest.workdir / item.name
                done = self._stage_without_fetch(
                    source, method, item, final, recovering=self.recovering, sync_folder=False
                )
                if done is not None:
                    self._item_done(item, chunk, final, done)
                    continue
                if source.revalidate(item):  # changed since the listing: the workers stage it as it is now
                    self._relist(item, item.validator)
                waiting[index] = (item, chunk, final)
                if self._groupable(executor, item):
                    small.append(index)
                    continue
                ranges[index] = self._submit(tasks, executor, source, item, final, index, tokens)
            groups = self._submit_small(tasks, executor, source, small, waiting, ranges, tokens)
            for (kind, index), result in tasks.results():
                if kind == "items":
                    for at, one in zip(groups.pop(index), result, strict=True):
                        self._item_done(*waiting[at], one)
                    continue
                item, chunk, final = waiting[index]
                if kind == "stored":
                    size, sha, path = result
                    self._chunk_done(chunk, bytes=size, sha256=sha, path=path)
                    continue
                if kind == "range":
                    ranges[index] -= 1
                    if ranges[index] == 0:
                        checksums = self._expected_checksums(item)
                        tasks.submit(
                            finish_ranges,
                            tasks.ctx,
                            self._rel(final),
                            item.size,
                            checksums,
                            item.checksums,
                            token=tokens.pop(index, None),
                            tag=("item", index),
                        )
                    continue
                self._item_done(item, chunk, final, result)

    def _groupable(self, executor: DaskExecutor, item: SourceItem) -> bool:
        """True when ``item`` may be staged in a group task (:mod:`~jupyter_staging.engine.itemtasks`): a
        file of known size of at most :data:`GROUPED_BYTES` (and not split into ranges) into a shared
        folder."""
        return (
            not self.dest.remote
            and item.size is not None
            and item.size <= min(GROUPED_BYTES, executor.range_bytes)
        )

    def _submit_small(
        self,
        tasks: TaskBatch,
        executor: DaskExecutor,
        source: Source,
        small: list[int],
        waiting: dict[int, tuple[SourceItem, JobChunk, Path]],
        ranges: dict[int, int],
        tokens: dict[int, str | None],
    ) -> dict[int, list[int]]:
        """Submit the files at ``small`` (indexes of ``waiting``, the ones left to fetch: a resumed or
        re-run job's done or reused files are not counted) in groups (:func:`files_per_group`), or a task
        each when they are too few to group. Returns ``{group task number: its files' indexes}``."""
        grouping: Grouping[int] = Grouping(files_per_group(len(small)))
        groups: dict[int, list[int]] = {}
        if grouping.per_group == 1:
            for index in small:
                item, _, final = waiting[index]
                ranges[index] = self._submit(tasks, executor, source, item, final, index, tokens)
            return groups
        for index in small:
            full = grouping.add(index, waiting[index][0].size or 0)
            if full is not None:
                self._submit_group(tasks, source, full, waiting, groups, grouping.count)
        rest = grouping.drain()
        if rest is not None:
            self._submit_group(tasks, source, rest, waiting, groups, grouping.count)
        self._log(
            "info",
            f"{len(small)} small files as {len(groups)} Dask tasks of up to {grouping.per_group} files",
        )
        return groups

    def _submit_group(
        self,
        tasks: TaskBatch,
        source: Source,
        indexes: list[int],
        waiting: dict[int, tuple[SourceItem, JobChunk, Path]],
        groups: dict[int, list[int]],
        number: int,
    ) -> None:
        """Submit one :func:`~jupyter_staging.engine.itemtasks.fetch_items` task for the files at
        ``indexes`` of ``waiting``; its result comes back tagged ``("items", number)``."""
        entries: list[GroupEntry] = []
        for index in indexes:
            item, _, final = waiting[index]
            checksums = self._expected_checksums(item)
            entries.append((item, self._rel(final), checksums, second_algorithm(checksums)))
        groups[number] = indexes
        tasks.submit(
            fetch_items,
            tasks.ctx,
            source.uri,
            self.host.source_roots,
            entries,
            streams=self.host.streams_per_file,
            tag=("items", number),
        )

    def _submit(
        self,
        tasks: TaskBatch,
        executor: DaskExecutor,
        source: Source,
        item: SourceItem,
        final: Path,
        index: int,
        tokens: dict[int, str | None],
    ) -> int:
        """Submit the task(s) of one file; returns how many byte-range tasks (0: one fetch task). For range
        tasks, the token of the part they fill goes into ``tokens[index]`` (for ``finish_ranges``)."""
        checksums = self._expected_checksums(item)
        if self.dest.remote:  # the worker uploads what it fetched (object storage needs no shared folder)
            tasks.submit(
                fetch_item_to_store,
                tasks.ctx,
                source.uri,
                self.host.source_roots,
                item,
                self.dest.chunk_path(""),
                item.name,
                checksums,
                second=second_algorithm(checksums),
                streams=self.host.streams_per_file,
                tag=("stored", index),
            )
            return 0
        if item.size is None or item.size <= executor.range_bytes or not source.supports_ranges(item):
            tasks.submit(
                fetch_item,
                tasks.ctx,
                source.uri,
                self.host.source_roots,
                item,
                self._rel(final),
                checksums,
                second=second_algorithm(checksums),
                streams=self.host.streams_per_file,
                tag=("item", index),
            )
            return 0
        with suppress(SourceChanged):  # the range tasks find the new version too, and say so
            source.ask_checksums(item)  # for finish_ranges: the ranges' answers state none
        out = self._open_part(item, final, second=None)  # sets aside a foreign .part, tags ours
        try:
            os.ftruncate(out.fileno(), item.size)
            token = mark_ranges_part(out.fileno())  # the tasks fill and publish this very file only
        except BaseException as exc:
            out.discard()  # nothing for the tasks to fill: not left behind
            if isinstance(exc, PermissionError):  # the mark refused (a security module)
                raise write_refused(final.name, exc) from None
            raise
        out.close()
        tokens[index] = token
        step = executor.range_bytes
        spans = byte_ranges(item.size, step)
        for start, length in spans:
            tasks.submit(
                fetch_range,
                tasks.ctx,
                source.uri,
                self.host.source_roots,
                item,
                self._rel(final),
                start,
                length,
                token=token,
                tag=("range", index),
            )
        self._log("info", f"{item.name}: {len(spans)} ranges of up to {step} bytes as Dask tasks")
        return len(spans)

    def _item_done(self, item: SourceItem, chunk: JobChunk, final: Path, result: Any) -> None:
        size, sha = result
        path = self.dest.put(
            final, item.name, size=size, sha256=sha, content_type=item.content_type, control=self.control
        )
        folder = None if self.dest.remote else final.parent
        self._chunk_done(chunk, folder=folder, bytes=size, sha256=sha, path=path)

    def _rel(self, path: Path) -> str:
        """``path`` relative to the confinement root (POSIX)."""
        assert self.dest.confinement_root is not None
        return path.relative_to(self.dest.confinement_root).as_posix()

    def _tasks(self, executor: DaskExecutor) -> JobTasks:
        """This run's :class:`JobTasks`, made (once the workers proved they see the destination folder)
        by the first thread that needs it."""
        with self._lock:
            if self._job_tasks is None:
                tasks = JobTasks(
                    executor.client(),
                    TaskContext(
                        self.job_id,
                        str(self.dest.confinement_root or ""),
                        attempt=int(self.resume.get("attempts", 1)),
                        tagged=bool(self.resume.get(PUBLISHED_TAGS)),
                        parts_tagged=parts_tagged(self.resume),
                    ),
                    self.control,
                    self.live,
                    lambda: self.host.report_progress(self.job_id),
                )
                try:
                    if not self.dest.remote:
                        with tasks.batch() as probe:
                            self._probe(probe)
                except BaseException:
                    tasks.close()
                    raise
                self._job_tasks = tasks
            return self._job_tasks

    def close_tasks(self, *, forget_run: bool = True) -> None:
        """End this run's :class:`JobTasks`, if it had one (``forget_run``: see :meth:`JobTasks.close`)."""
        with self._lock:
            tasks, self._job_tasks = self._job_tasks, None
        if tasks is not None:
            tasks.close(forget_run=forget_run)

    def _probe(self, tasks: TaskBatch) -> None:
        """Raise :class:`DestinationNotShared` unless a worker's probe file reaches this server."""
        assert self.dest.confinement_root is not None
        folder = self._rel(self.dest.workdir)
        self.dest.files.makedirs(self.dest.workdir)
        token = secrets.token_hex(16)
        tasks.submit(probe_folder, tasks.ctx, folder, token, tag=("probe", -1), retries=0, counted=False)
        try:
            host = next((result for _, result in tasks.results()), "?")
        except (StagingError, JobInterrupted):  # a pause or cancel while the probe waited: not the folder
            raise
        except Exception as exc:  # the folder is missing or different on the worker
            raise self._not_shared(folder, type(exc).__name__) from None
        seen, tagged = read_probe(self.dest.confinement_root, folder, token, self.job_id)
        if not seen:
            raise self._not_shared(folder, f"a file written by worker host {host} did not appear here")
        self._log("info", f"Dask workers see the destination folder (probe from host {host})")
        if not tagged and self.resume.get(PARTS_TAGGED):
            # Its parts would be untagged here: the job's cleanup keeps to the rule before the tag for them.
            self._resume_put(UNTAGGED_PARTS_HOSTS, host, True)
            self._save_changes()
            self._log(
                "info",
                f"worker host {host} cannot tag the part files it makes (its mount keeps no user "
                "attributes): if the job fails, any .part at its names is removed",
            )

    @staticmethod
    def _not_shared(folder: str, why: str) -> DestinationNotShared:
        return DestinationNotShared(
            f"the Dask workers cannot see the destination folder {folder!r} ({why}); stage into a folder on "
            "a file system the workers share, or run this job on the server's own threads (LocalExecutor)"
        )
