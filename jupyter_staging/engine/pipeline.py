"""Folders of many small local files: one thread copies, their fsyncs are in flight together.

A copy job makes every file durable before it is published (fsync, then ``linkat``). For a file of 64 KiB
the fsync is most of its time, and the copy itself is a little Python: handing each file to its own worker
thread (``concurrent_items`` of them) makes those workers fight for the GIL at every system call, for no
gain on a machine of few cores. Here the job's thread copies the small files one after another, each
file's fsync is handed to a pool (the file system commits the fsyncs in flight together), and each file is
verified, published and recorded, in order, once its fsync has returned. Larger files, and every other
method, are staged as before (:meth:`~jupyter_staging.engine.items.ItemStager._transfer_all`).
"""

from __future__ import annotations

import functools
import os
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from types import TracebackType

from jupyter_staging.engine.models import ChunkState
from jupyter_staging.engine.store import ChunkRecord
from jupyter_staging.engine.streams import StreamingStager
from jupyter_staging.safety.partfile import PartFile
from jupyter_staging.sources.base import Source, SourceItem

#: Local files up to this size (bytes) are copied on the job's thread with their fsyncs in flight on a
#: pool; bigger ones each get a worker thread (their copy moves in the kernel, ``copy_file_range``).
PIPELINED_BYTES = 4 * 1024 * 1024
#: Files written and waiting for their fsync, per fsync thread, before the writing thread waits.
WAITING_PER_THREAD = 4
#: Files whose fsyncs are started together, one after another on one thread. On ext4 (``data=ordered``) the
#: first fsync commits the journal with the data of every file written before it, so the others find
#: little left to do: one disk flush per group instead of one per file.
SYNC_GROUP_FILES = 16
#: Source files whose reading is started ahead of the copy (``posix_fadvise``), in groups of this many on a
#: thread of their own (opening a file whose inode is not cached waits for the disk): with a cold page
#: cache, reading 2,000 files of 64 KiB one after another took 0.97 s here, 0.43 s read ahead.
READ_AHEAD_FILES = 16


def read_ahead(paths: list[Path | None]) -> None:
    """Ask the kernel to start reading each file of ``paths`` (None: skipped) into the page cache
    (``posix_fadvise(POSIX_FADV_WILLNEED)``, POSIX.1-2001). Errors are ignored: the copy reports them."""
    for path in paths:
        if path is None:
            continue
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
        except OSError:
            pass
        finally:
            os.close(fd)


class SyncPipeline:
    """Part files whose fsync runs on a pool of ``threads`` while the caller writes the next ones.

    :meth:`add` hands over a written :class:`~jupyter_staging.safety.partfile.PartFile` and what to do once
    it is durable (``then``: verify, publish, record); the ``then`` calls run on the caller's thread, in
    the order the files were added, each once its fsync has returned. Files are fsynced in groups of
    :data:`SYNC_GROUP_FILES`, each group by one task; at most ``threads`` x :data:`WAITING_PER_THREAD`
    files wait (each holds two descriptors). Used as a context manager: a normal
    exit waits for every file; an exception closes the files still waiting without publishing them
    (each ``.part`` stays, tagged by its job, for a resume) and propagates. The first ``then`` or fsync
    that raises stops the pipeline the same way."""

    def __init__(self, threads: int) -> None:
        self._pool = ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="staging-fsync")
        self._limit = max(1, threads) * WAITING_PER_THREAD
        self._waiting: deque[tuple[Future[None], PartFile, Callable[[], None]]] = deque()
        self._group: list[tuple[PartFile, Callable[[], None]]] = []

    def __enter__(self) -> SyncPipeline:
        return self

    def add(self, out: PartFile, then: Callable[[], None]) -> None:
        """Queue ``out``'s fsync (started with its group's); run ``then`` of every file whose fsync is
        done, oldest first (waiting for the oldest when too many are in flight). Raises what a fsync or a
        ``then`` raised."""
        self._group.append((out, then))
        if len(self._group) >= SYNC_GROUP_FILES:
            self._start_group()
        while self._waiting and (self._waiting[0][0].done() or len(self._waiting) > self._limit):
            self._finish_oldest()

    def _start_group(self) -> None:
        """fsync the files of the current group, in order, as one task of the pool."""
        group, self._group = self._group, []
        if group:
            synced = self._pool.submit(_sync_all, [out for out, _ in group])
            self._waiting.extend((synced, out, then) for out, then in group)

    def _finish_oldest(self) -> None:
        synced, out, then = self._waiting.popleft()
        try:
            synced.result()
            then()
        except BaseException:
            _close(out)
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if exc is None:
                self._start_group()
                while self._waiting:
                    self._finish_oldest()
        finally:
            self._abandon()

    def _abandon(self) -> None:
        """Close (not publish) the files still waiting, once their fsync is over; stop the pool."""
        self._start_group()
        while self._waiting:
            synced, out, _ = self._waiting.popleft()
            try:
                synced.result()
            except BaseException:  # noqa: S110 - the error that stopped the pipeline is the one raised
                pass
            _close(out)
        self._pool.shutdown(wait=True)


def _sync_all(outs: list[PartFile]) -> None:
    """:meth:`~jupyter_staging.safety.partfile.PartFile.sync` each of ``outs``, in order."""
    for out in outs:
        out.sync()


def _close(out: PartFile) -> None:
    """Close ``out`` without publishing it (kept for a resume); discarded when even that fails."""
    try:
        out.close()
    except OSError:
        out.discard()


class PipelinedStager(StreamingStager):
    """Copies the small local files of a job through a :class:`SyncPipeline`; everything else as
    :class:`~jupyter_staging.engine.streams.StreamingStager`."""

    def _transfer_all(self, source: Source, method: str, work: list[tuple[SourceItem, ChunkRecord]]) -> None:
        small = [pair for pair in work if self._pipelined(source, method, *pair)]
        if len(small) > 1:
            with self._item_slots:  # the job's thread stages them: one item slot
                self._copy_pipelined(source, small)
            chosen = {id(pair) for pair in small}
            work = [pair for pair in work if id(pair) not in chosen]
        super()._transfer_all(source, method, work)

    def _pipelined(self, source: Source, method: str, item: SourceItem, chunk: ChunkRecord) -> bool:
        """True for a pending copy of a local file of at most :data:`PIPELINED_BYTES` into a local
        destination."""
        return (
            method == "copy"
            and not self.dest.remote
            and chunk.state == ChunkState.pending.value
            and item.size is not None
            and item.size <= PIPELINED_BYTES
            and source.local_path(item) is not None
        )

    def _copy_pipelined(self, source: Source, work: list[tuple[SourceItem, ChunkRecord]]) -> None:
        """Copy ``work`` on this thread, each file verified, published and recorded once its fsync (on the
        pipeline's threads) returned, the reading of the sources started ahead (:data:`READ_AHEAD_FILES`);
        the first error stops the rest (their parts are kept for a resume)."""
        paths = [source.local_path(item) for item, _ in work]
        step = READ_AHEAD_FILES
        with (
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="staging-read-ahead") as ahead,
            SyncPipeline(self.host.concurrent_items) as pipeline,
        ):
            ahead.submit(read_ahead, paths[:step])
            for index, (item, chunk) in enumerate(work):
                self.control.check()
                if index % step == 0:  # one group ahead of the one being copied
                    ahead.submit(read_ahead, paths[index + step : index + 2 * step])
                final = self.dest.workdir / item.name
                done = self._stage_without_fetch(
                    source, "copy", item, final, recovering=self.recovering, sync_folder=False
                )
                if done is not None:
                    self._record_transfer(item, chunk, final, *done)
                    continue
                out = self._fetch_part(source, item, final)
                pipeline.add(out, functools.partial(self._publish_part, out, item, chunk, final))
                self.host.report_progress(self.job_id)

    def _publish_part(self, out: PartFile, item: SourceItem, chunk: ChunkRecord, final: Path) -> None:
        """Verify and publish the synced ``out`` (its folder fsynced with the next chunk batch) and record
        ``chunk`` ready."""
        size, sha = self._commit_part(out, item, sync_folder=False)
        self._record_transfer(item, chunk, final, size, sha)
        self.host.report_progress(self.job_id)
