"""The tasks that stage whole files on a Dask worker: one file (:func:`fetch_item`), or a group of small
files one after another (:func:`fetch_items`); byte ranges of big files and table ranges are in
:mod:`jupyter_staging.engine.tasks`.

A task costs the cluster a few milliseconds whatever it does: the scheduler places it, the worker runs it
and polls its job's control variable, the runner waits for its future and fetches its result. For a file of
64 KiB that is most of the work: a folder of 2,000 of them, one task each, staged at about 110 files/s on
two local workers. So the small files of a big folder go as tasks of up to :data:`GROUP_FILES` files
(:class:`Grouping` makes the groups, and leaves the cluster at least :data:`MIN_TASKS` tasks to spread), each
file staged exactly as :func:`fetch_item` stages it.

The single-file entries of a manifest go in groups the same way, each file with its own source
(:func:`fetch_entries`): a file whose error would only repeat (a checksum that does not match) fails alone,
handed back in its place, and the group goes on with the next.

A task run again (its worker died, a transient error) stages its files again, taking back those an earlier
try published (:func:`~jupyter_staging.engine.tasks.published_earlier`); a pause or cancel stops a group
between two files (and inside a file, as for any task).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Generic, TypeVar

from jupyter_staging.engine.taskoutcomes import FINAL_ERRORS, TaskFailed
from jupyter_staging.engine.tasks import LOG_LINES, TaskContext, TaskControl, published_earlier
from jupyter_staging.engine.verified import fetch_verified
from jupyter_staging.errors import as_staging_error
from jupyter_staging.sources.base import Source, SourceItem
from jupyter_staging.sources.registry import open_source

__all__ = [
    "GROUPED_BYTES",
    "GROUP_BYTES",
    "GROUP_FILES",
    "MIN_TASKS",
    "GroupEntry",
    "Grouping",
    "fetch_entries",
    "fetch_item",
    "fetch_items",
    "files_per_group",
]

#: Files of at most this many bytes are staged in groups (bigger ones get a task each, or byte ranges).
GROUPED_BYTES = 4 * 1024 * 1024
#: Files in one group task at most.
GROUP_FILES = 32
#: Bytes of one group task at most (the sum of its files' sizes).
GROUP_BYTES = 64 * 1024 * 1024
#: Tasks a folder's small files are spread over at least, when there are as many files: groups shrink
#: (down to one file) rather than leave a cluster's threads idle.
MIN_TASKS = 64

#: One file of a group: the item, its final path relative to the job's root, the checksums to verify
#: (``{algorithm: hex}``) and the second digest to compute (None: the one the source states).
GroupEntry = tuple[SourceItem, str, dict[str, str], str | None]

T = TypeVar("T")


def files_per_group(count: int) -> int:
    """Files per group for a batch of ``count`` files: :data:`GROUP_FILES`, or fewer so that the batch
    still makes :data:`MIN_TASKS` tasks; 1 (no grouping) below ``2 * MIN_TASKS`` files."""
    return max(1, min(GROUP_FILES, count // MIN_TASKS))


class Grouping(Generic[T]):
    """Collects files (any value standing for one, with its size in bytes) into groups of consecutive
    ones: at most ``per_group`` files (:func:`files_per_group`) and :data:`GROUP_BYTES` each (a file over
    that is a group of its own)."""

    def __init__(self, per_group: int) -> None:
        self.per_group = per_group
        self._current: list[T] = []
        self._bytes = 0
        #: Groups handed out so far.
        self.count = 0

    def add(self, value: T, nbytes: int) -> list[T] | None:
        """Add one file; returns the group this file does not fit in any more (to submit now), if any."""
        full = None
        if self._current and (len(self._current) >= self.per_group or self._bytes + nbytes > GROUP_BYTES):
            full = self.drain()
        self._current.append(value)
        self._bytes += nbytes
        return full

    def drain(self) -> list[T] | None:
        """The files added and not handed out yet, as one group (None when there are none)."""
        if not self._current:
            return None
        group, self._current, self._bytes = self._current, [], 0
        self.count += 1
        return group


def fetch_item(
    ctx: TaskContext,
    uri: str,
    source_roots: list[str] | None,
    item: SourceItem,
    final_rel: str,
    checksums: dict[str, str],
    *,
    second: str | None,
    streams: int = 1,
) -> tuple[int, str]:
    """Fetch ``item`` of source ``uri`` into ``final_rel`` (below the root): a fresh ``.part`` (a dead
    attempt's is replaced; a file of someone else's at its name set aside and logged), on ``streams``
    parallel streams when it is large enough (:func:`fetch_verified`), verified against ``item.size`` and
    ``checksums`` (``{algorithm: hex}``, plus those the source states when the bytes come), published.
    Returns ``(size_bytes, sha256_hex)``.

    Raises what the source and :meth:`PartFile.commit` raise (``transfer_failed``, ``checksum_mismatch``,
    ``size_mismatch``, ``destination_exists``, ...), and :class:`JobInterrupted` on pause or cancel (the
    ``.part`` stays; the next attempt replaces it)."""
    control = TaskControl(ctx)
    try:
        return _fetch_one(
            ctx,
            control,
            lambda: open_source(uri, source_roots=source_roots),
            item,
            final_rel,
            checksums,
            second=second,
            streams=streams,
        )
    finally:
        control.flush()


def _fetch_one(
    ctx: TaskContext,
    control: TaskControl,
    source: Callable[[], Source],
    item: SourceItem,
    final_rel: str,
    checksums: dict[str, str],
    *,
    second: str | None,
    streams: int,
) -> tuple[int, str]:
    """The body of :func:`fetch_item` with the task's ``control`` and a ``source`` opened when first
    called (not at all for a file an earlier attempt published): shared with the tasks that stage a group
    of small files (:func:`fetch_items`). A file an earlier try published is taken back, its bytes counted
    by this try. Returns ``(size_bytes, sha256_hex)``; raises as :func:`fetch_item`."""
    control.check()
    published = published_earlier(ctx, final_rel, item.size)
    if published is not None:
        # Counted again: a try counts from zero (the server takes back what an earlier try of the task
        # reported), so the bytes of a file the earlier try published would vanish from the job's progress.
        control.add_bytes(published[0])
        return published
    return fetch_verified(
        source(),
        item,
        control,
        ctx.path(final_rel),
        Path(ctx.root),
        checksums,
        second=second,
        streams=streams,
        owner=ctx.job_id,
        claim_untagged=not ctx.parts_tagged,
    )


def fetch_items(
    ctx: TaskContext,
    uri: str,
    source_roots: list[str] | None,
    entries: list[GroupEntry],
    *,
    streams: int = 1,
) -> list[tuple[int, str]]:
    """Stage each of ``entries`` of source ``uri`` in turn, as :func:`fetch_item`
    would, with one control (one poll of the job's control variable per
    :data:`~jupyter_staging.engine.tasks.POLL_SECONDS`, progress events shared) and the source opened once.
    Returns ``[(size_bytes, sha256_hex), ...]`` in the order of ``entries``.

    Raises the first file's error as :func:`fetch_item` would (the files before it stay published: a try
    again, or the job's next run, takes them back), :class:`~jupyter_staging.errors.JobInterrupted` on
    pause or cancel."""
    control = TaskControl(ctx, log_lines=LOG_LINES * max(1, len(entries)))
    opened: list[Source] = []

    def source() -> Source:
        if not opened:
            opened.append(open_source(uri, source_roots=source_roots))
        return opened[0]

    results: list[tuple[int, str]] = []
    try:
        for item, final_rel, checksums, second in entries:
            results.append(
                _fetch_one(ctx, control, source, item, final_rel, checksums, second=second, streams=streams)
            )
    finally:
        control.flush()
    return results


def fetch_entries(
    ctx: TaskContext,
    source_roots: list[str] | None,
    entries: list[tuple[str, GroupEntry]],
    *,
    streams: int = 1,
) -> list[tuple[int, str] | TaskFailed]:
    """Stage each of ``entries`` (``(source uri, entry)``: the one file of a manifest entry, from its own
    source) in turn, as :func:`fetch_item` would, with one control. Returns, in the order of ``entries``,
    ``(size_bytes, sha256_hex)`` of each file, or a :class:`TaskFailed` in the place of a file that failed
    with an error running it again would only repeat (``checksum_mismatch``, ``source_changed``, ...:
    :data:`~jupyter_staging.engine.taskoutcomes.FINAL_ERRORS`); the next files are staged all the same.

    Raises any other error of a file at once (the task is run again: the files it published are taken
    back), :class:`~jupyter_staging.errors.JobInterrupted` on pause or cancel."""
    control = TaskControl(ctx, log_lines=LOG_LINES * max(1, len(entries)))
    results: list[tuple[int, str] | TaskFailed] = []
    try:
        for uri, (item, final_rel, checksums, second) in entries:

            def source(uri: str = uri) -> Source:
                return open_source(uri, source_roots=source_roots)

            try:
                one = _fetch_one(
                    ctx, control, source, item, final_rel, checksums, second=second, streams=streams
                )
            except Exception as exc:
                known = as_staging_error(exc)
                if not isinstance(known, FINAL_ERRORS):
                    raise
                results.append(TaskFailed(known))
                continue
            results.append(one)
    finally:
        control.flush()
    return results
