"""What the workers of a distributed executor run: each function here is one Dask task of a job.

Tasks are plain module-level functions of picklable arguments (paths as strings, :class:`SourceItem` s,
:class:`TaskContext`), so any worker that has ``jupyter_staging`` installed can run them. They write only
below the job's confinement root, by descriptor (:mod:`jupyter_staging.safety.dirfd`), and publish a file
only when it is complete and verified, exactly as the server's own threads do. What they do not do is the
bookkeeping: they return sizes and sha256 digests, and the job's runner in the server records chunks, the
manifest and the job's state (:mod:`jupyter_staging.engine.spread`).

A retried task (its worker died, Dask ran it again elsewhere) starts its output afresh: a part file left by
the dead attempt is replaced (a byte range is rewritten), never trusted. Whether the workers see the
destination at all is asked first (:mod:`jupyter_staging.engine.probe`).

Pause and cancel reach a running task through a ``distributed.Variable`` named by its job, run and batch
(:attr:`TaskContext.control_key`), and a task of a run that was superseded (the server died and runs the
job again) stops through the job's :attr:`TaskContext.run_key`; both are polled at most every
:data:`POLL_SECONDS` while the task works. Bytes and rows flow back as Dask structured events on
:attr:`TaskContext.topic` (``distributed.Worker.log_event``), at most every :data:`REPORT_SECONDS` per task.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
import threading
import time
import uuid
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jupyter_staging.destinations.registry import open_destination
from jupyter_staging.engine.verified import fetch_verified
from jupyter_staging.errors import (
    VerificationFailed,
)
from jupyter_staging.formats.base import ChunkInfo
from jupyter_staging.formats.convert import convert_to_parquet
from jupyter_staging.formats.parquet import part_name
from jupyter_staging.safety.checksums import (
    second_algorithm,
    verifiable_here,
)
from jupyter_staging.safety.confined import Confined
from jupyter_staging.safety.control import JobControl
from jupyter_staging.safety.dirfd import (
    folder_fd,
    lstat_at,
    open_existing,
    open_folder,
    unlink_at,
)
from jupyter_staging.safety.ownership import check_ranges_part, taken_back
from jupyter_staging.safety.partfile import PartFile, part_path
from jupyter_staging.safety.publishing import unlink_if_names
from jupyter_staging.sources.base import SourceItem
from jupyter_staging.sources.registry import open_source

#: Seconds between two looks of a task at its job's control variable (pause / cancel).
POLL_SECONDS = 0.5
#: Seconds between two progress events of one task.
REPORT_SECONDS = 0.25
#: Lines a task may add to its job's log (:meth:`TaskControl.log`): a set-aside file, a notice.
LOG_LINES = 20
#: Bytes read at a time when hashing a published file.
RANGE_STEP = 16 * 1024**2
#: What a job's control variable holds while it may run.
RUN = "run"


@dataclass(frozen=True)
class TaskContext:
    """What every task of one batch knows: its job's ``job_id``, the confinement ``root`` (the server's
    root folder, as the workers see it: the same path on a shared file system), the ``batch`` of tasks it
    belongs to (the tasks the runner waits for together: a folder's files, one manifest entry's), the name
    of the batch's control variable and of the job's progress topic."""

    job_id: str
    root: str
    batch: str = "0"
    #: The run of the job (``JobRecord.resume["attempts"]``): a task of an earlier run, left running when
    #: the server died, stops once it finds a newer run in :attr:`run_key`.
    attempt: int = 1
    #: The job was started by a version that tags what it publishes (``PUBLISHED_TAGS`` in its resume
    #: data): a file at a task's name is the job's only with the job's tag. Without it, by the rules before.
    tagged: bool = True
    #: Every part file of the job is tagged as its own (:func:`~jupyter_staging.engine.folders.parts_tagged`):
    #: without it, an untagged file at a new part's name is the job's (removed), not set aside.
    parts_tagged: bool = True

    @property
    def control_key(self) -> str:
        return f"jupyter-staging-control-{self.job_id}-{self.attempt}-{self.batch}"

    @property
    def run_key(self) -> str:
        """Name of the variable holding the job's current run (its attempt number)."""
        return f"jupyter-staging-run-{self.job_id}"

    @property
    def topic(self) -> str:
        return f"jupyter-staging-progress-{self.job_id}"

    def path(self, rel: str) -> Path:
        """``rel`` (POSIX, relative to the root) as a path below the root."""
        return Path(self.root) / rel


class TaskControl(JobControl):
    """The job's control as a task sees it: :meth:`check` reads the job's control variable (at most
    every :data:`POLL_SECONDS`), bytes and rows are sent back as structured events."""

    def __init__(self, ctx: TaskContext, *, count_bytes: bool = True, log_lines: int = LOG_LINES) -> None:
        super().__init__(log=self._send_log)
        self.ctx = ctx
        self._logged = 0
        self._log_lines = log_lines
        self.count_bytes = count_bytes
        self._checked = 0.0
        self._sent = time.monotonic()
        self._bytes = 0
        self._rows = 0
        #: Guards the counters and the poll time: a task's parallel streams share its control.
        self._lock = threading.Lock()
        # The worker and its client, found on the task's own thread (``get_worker`` knows no other):
        # the task's stream threads poll and report through them. None outside a worker.
        # Deferred import: distributed is imported only on workers (the optional dask extra).
        from distributed import get_client, get_worker

        try:
            self._worker: Any = get_worker()
            self._client: Any = get_client()
        except ValueError:
            self._worker = self._client = None
        #: The task's key and this try of it: a task run again (after an error, a worker lost) counts from
        #: zero, and the server takes back what its earlier try reported (``JobTasks._on_event``).
        self._task = self._worker.get_current_task() if self._worker is not None else None
        self._try = uuid.uuid4().hex[:12]

    def check(self) -> None:
        now = time.monotonic()
        with self._lock:
            due = now - self._checked >= POLL_SECONDS
            if due:
                self._checked = now
        if due:
            from distributed import Variable  # deferred: as above

            value = Variable(self.ctx.control_key, client=self._client).get(timeout=30)
            if value != RUN:
                self.interrupt(str(value))
            elif Variable(self.ctx.run_key, client=self._client).get(timeout=30) != self.ctx.attempt:
                self.interrupt("superseded")  # the server restarted and runs the job again
        super().check()

    def wait(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.check()
            time.sleep(min(POLL_SECONDS, max(0.0, deadline - time.monotonic())))
        self.check()

    def add_bytes(self, n: int) -> None:
        if self.count_bytes:
            with self._lock:
                self._bytes += n
            self._report()

    def add_rows(self, n: int) -> None:
        with self._lock:
            self._rows += n
        self._report()

    def _report(self, *, force: bool = False) -> None:
        now = time.monotonic()
        with self._lock:
            if not (self._bytes or self._rows) or (not force and now - self._sent < REPORT_SECONDS):
                return
            event = {"bytes": self._bytes, "rows": self._rows}
            self._sent, self._bytes, self._rows = now, 0, 0
        self._emit(event)

    def _send_log(self, level: str, message: str) -> None:
        """Send a line for the job's log (``level``: info, warning, error) to the server at once, as an
        event ``{"log": [level, message]}``; at most ``log_lines`` per task (later ones are dropped)."""
        with self._lock:
            self._logged += 1
            if self._logged > self._log_lines:
                return
        self._emit({"log": [level, message]})

    def _emit(self, event: dict[str, Any]) -> None:
        """Send ``event`` on the job's topic (``distributed.Worker.log_event``), with the run, the task and
        the try it comes from (keys ``attempt``, ``task``, ``attempt_try``)."""
        worker = self._worker
        if worker is None:
            from distributed import get_worker  # deferred: as above

            worker = get_worker()
        event.update(attempt=self.ctx.attempt, task=self._task, attempt_try=self._try)
        worker.log_event(self.ctx.topic, event)  # thread-safe: sent from the worker's event loop

    def flush(self) -> None:
        """Send the bytes and rows not reported yet."""
        self._report(force=True)


def published_earlier(ctx: TaskContext, final_rel: str, size: int | None) -> tuple[int, str] | None:
    """``(size, sha256)`` of ``final_rel`` when an earlier attempt of this task published it (a regular
    file of the expected size, no ``.part`` beside it, tagged as the job's for the bytes it holds:
    :func:`~jupyter_staging.safety.ownership.taken_back`), else None. A task runs again after
    publishing when its worker died before the server read the result. A file someone else put there
    meanwhile (the runner submitted the task only after finding neither) is never taken: publishing then
    fails ``destination_exists``; where the file system keeps no user attributes
    (:func:`~jupyter_staging.safety.ownership.keeps_attributes`), or for a job an earlier version started
    (not :attr:`TaskContext.tagged`), no tag can tell, and a regular file of the expected size is taken, as
    before the tag. Publishing is ``linkat`` then ``unlinkat`` of the
    ``.part``: a worker killed between the two leaves both names on one file, and the ``.part`` name is
    dropped."""
    final = Path(final_rel)
    with folder_fd(Path(ctx.root), final.parent.as_posix(), create=True) as dir_fd:
        st = lstat_at(dir_fd, final.name)
        if st is None or not stat.S_ISREG(st.st_mode):
            return None
        part = lstat_at(dir_fd, part_path(final).name)
        if part is not None and not os.path.samestat(st, part):
            return None
        if part is not None:
            unlink_at(dir_fd, part_path(final).name)
        fd = open_existing(dir_fd, final.name, os.O_RDONLY | os.O_CLOEXEC)
    if fd is None:
        return None
    try:
        return taken_back(fd, ctx.job_id, final_rel, tagged=ctx.tagged, size=size)
    finally:
        os.close(fd)


def fetch_range(
    ctx: TaskContext,
    uri: str,
    source_roots: list[str] | None,
    item: SourceItem,
    final_rel: str,
    start: int,
    length: int,
    token: str | None = None,
) -> int:
    """Write bytes ``[start, start + length)`` of ``item`` (source ``uri``) into the same range of
    ``final_rel``'s ``.part`` (made at its full size beforehand, and marked with ``token``:
    :func:`~jupyter_staging.safety.ownership.mark_ranges_part`), with ``Source.fetch_range`` (a local
    file by ``copy_file_range``, HTTP by a conditional ``Range`` GET, S3 / Azure by a conditional ranged
    GET); fsynced. Returns the bytes written. Raises :class:`JobInterrupted` on pause or cancel,
    :class:`PathNotAllowed` when the part file is a symlink or not the server's (a file put at its name
    since: nothing written), and what the source raises (``source_changed`` when the version changed,
    ``transfer_failed``)."""
    control = TaskControl(ctx)
    source = open_source(uri, source_roots=source_roots)
    final = ctx.path(final_rel)
    with folder_fd(Path(ctx.root), Path(final_rel).parent.as_posix(), writing=True) as dir_fd:
        # Non-blocking open: a FIFO put at the name is refused (not a regular file), not waited on.
        fd = open_existing(dir_fd, part_path(final).name, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        if fd is None:
            raise FileNotFoundError(f"{final.name}: its part file is missing")
        try:
            check_ranges_part(fd, token, final.name)
            done = source.fetch_range(item, start, length, fd, control)
            os.fsync(fd)
        finally:
            os.close(fd)
            control.flush()
    return done


def finish_ranges(
    ctx: TaskContext,
    final_rel: str,
    size: int,
    checksums: dict[str, str],
    stated: dict[str, str] | None = None,
    token: str | None = None,
) -> tuple[int, str]:
    """Hash the assembled ``.part`` of ``final_rel`` once (sha256, and the other digest ``checksums`` asks
    for), verify it against ``size`` and ``checksums``, publish it. Returns ``(size_bytes, sha256_hex)``;
    raises as :meth:`PartFile.commit`. ``stated``: what the source states (``{algorithm: hex}``), for a
    worker that cannot compute an algorithm of ``checksums`` (no awscrt): one of these stands in for it, as
    in :func:`fetch_verified`, else :class:`VerificationFailed` (the ``.part`` is removed). ``token``: the
    part's mark (as :func:`fetch_range`): a file put at the part's name since is neither published nor
    removed (:class:`PathNotAllowed`)."""
    published = published_earlier(ctx, final_rel, size)
    if published is not None:
        return published
    final = ctx.path(final_rel)
    name = part_path(final).name
    dir_fd = open_folder(Path(ctx.root), Path(final_rel).parent.as_posix())
    try:
        # Read-write (PartFile re-hashes it, then links it): a FIFO put at the name is opened at once,
        # then refused (not a regular file), never waited on.
        part_fd = open_existing(dir_fd, name, os.O_RDWR | os.O_CLOEXEC)
        if part_fd is None:  # as a part of the wrong size: nothing to verify, nothing published
            raise VerificationFailed(f"{final.name}: its part file is missing; nothing was published")
    except BaseException:
        os.close(dir_fd)
        raise
    try:
        check_ranges_part(part_fd, token, final.name)
        checksums = verifiable_here(checksums, stated or {}, final.name)
    except VerificationFailed:  # nothing can be verified here: the assembled bytes are not kept
        with suppress(OSError):
            unlink_if_names(dir_fd, name, part_fd)
        os.close(part_fd)
        os.close(dir_fd)
        raise
    except BaseException:
        os.close(part_fd)
        os.close(dir_fd)
        raise
    # The very file checked, in the folder it was found in (both taken over by the part file).
    out = PartFile(
        final,
        resume=True,
        second=second_algorithm(checksums),
        root=Path(ctx.root),
        owner=ctx.job_id,
        dir_fd=dir_fd,
        named_fd=part_fd,
    )
    return out.commit(size, checksums=checksums or None)


def source_visible(path: str, size: int, mtime_ns: int) -> bool:
    """Whether the local file ``path`` is here with this ``size`` (bytes) and ``mtime_ns``: the worker
    sees the same file as the server (a table it is to convert in place)."""
    try:
        st = os.stat(path)
    except OSError:
        return False
    return st.st_size == size and st.st_mtime_ns == mtime_ns


def convert_range(
    ctx: TaskContext,
    src: str,
    out_rel: str,
    options: dict[str, Any],
    start_index: int,
    stop_index: int,
    start_offset: int | None,
    *,
    count_bytes: bool,
    keep: list[str],
) -> list[ChunkInfo]:
    """Convert the rows of parts ``start_index .. stop_index - 1`` of the table ``src`` into those Parquet
    parts of folder ``out_rel`` (below the root): exactly the files one whole conversion writes there
    (:func:`~jupyter_staging.formats.convert.convert_to_parquet` with the same ``options``: ``chunk_rows``,
    ``compression``, ``hdu``, ``fmt``, ``encoding``). ``start_offset``: the byte offset of part
    ``start_index``'s first line (CSV/TSV, from :mod:`jupyter_staging.formats.split`). Parts of this range
    left by a dead attempt of this job (tagged as its own for their path and bytes,
    :func:`~jupyter_staging.safety.ownership.taken_back`) are removed first, never those named in
    ``keep`` (the part files the folder held before the job wrote any) nor any other file: the range then
    fails ``destination_exists`` at it. ``count_bytes``: report source bytes (False when the server
    counted them already, for a download). Returns the parts written, in order.

    Raises what the converter raises (``conversion_failed``, ``destination_exists``, ...) and
    :class:`JobInterrupted` on pause or cancel (parts published so far stay; the runner records none of
    this range and removes them before the range runs again)."""
    control = TaskControl(ctx, count_bytes=count_bytes)
    control.check()
    out_dir = ctx.path(out_rel)
    files = Confined(Path(ctx.root))
    for index in range(start_index, stop_index):
        name = part_name(index)
        st = files.lstat(out_dir / name)
        if name not in keep and st is not None and stat.S_ISREG(st.st_mode):
            if published_earlier(ctx, f"{out_rel}/{name}", None) is not None:
                files.unlink(out_dir / name)
    try:
        return convert_to_parquet(
            Path(src),
            out_dir,
            chunk_rows=int(options["chunk_rows"]),
            compression=str(options["compression"]),
            hdu=options.get("hdu"),
            fmt=options.get("fmt"),
            encoding=options.get("encoding"),
            control=control,
            start_index=start_index,
            stop_index=stop_index,
            start_offset=start_offset,
            root=Path(ctx.root),
            owner=ctx.job_id,
            claim_untagged=not ctx.parts_tagged,
        )
    finally:
        control.flush()


def fetch_item_to_store(
    ctx: TaskContext,
    uri: str,
    source_roots: list[str] | None,
    item: SourceItem,
    destination: str,
    rel: str,
    checksums: dict[str, str],
    *,
    second: str | None,
    streams: int = 1,
) -> tuple[int, str, str]:
    """Fetch ``item`` of source ``uri`` into a scratch folder of this worker's own (on ``streams``
    parallel streams when it is large enough: :func:`fetch_verified`), verify it (size,
    ``checksums`` and those the source states), and upload it as ``rel`` of the job's object-store prefix
    ``destination`` (``s3://bucket/prefix/<job_id>/``, ``az://...``) with the destination's verified upload;
    the scratch copy is removed. Returns ``(size_bytes, sha256_hex, chunk path)`` (the object's URI).

    The worker needs the object store's credentials in its environment (as the server has them). Raises
    what the source, :meth:`PartFile.commit` and the upload raise, and :class:`JobInterrupted` on pause
    or cancel (nothing uploaded; the next attempt fetches again)."""
    control = TaskControl(ctx)
    control.check()
    scratch = Path(tempfile.mkdtemp(prefix="jupyter-staging-task-"))
    try:
        dest = open_destination(ctx.job_id, destination, root_dir=scratch, scratch_root=scratch)
        local = dest.workdir / rel
        source = open_source(uri, source_roots=source_roots)
        size, sha = fetch_verified(
            source, item, control, local, scratch, checksums, second=second, streams=streams
        )
        path = dest.put(local, rel, size=size, sha256=sha, content_type=item.content_type, control=control)
        return size, sha, path
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        control.flush()
