"""The staging manager: creates, runs, steers and recovers jobs.

This is the engine every surface calls — the server extension, the hub service, scripts and the
in-process fallback of the magics. It is synchronous and thread-safe; it imports nothing from tornado,
Jupyter or IPython. Callers on an event loop call it from a worker thread.

Every state change is persisted in the :class:`~jupyter_staging.engine.store.Store` before it is announced to
listeners (``subscribe``), and jobs that were running when the process died are resumed by :meth:`start`.
"""

from __future__ import annotations

import getpass
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import unquote, urlsplit

from jupyter_staging.destinations.base import SCRATCH_FOLDER, Destination, remove_tree_if_empty
from jupyter_staging.destinations.registry import (
    check_object_destination,
    is_object_destination,
    object_destination,
    open_destination,
)
from jupyter_staging.destinations.manifest import MANIFEST_NAME
from jupyter_staging.engine.executors import Executor, LocalExecutor
from jupyter_staging.engine.models import (
    TRANSITIONS,
    ChunkState,
    ConvertOptions,
    CreateJob,
    DescribeChunk,
    DescribeJob,
    JobError,
    JobState,
    ListJobsQuery,
    ListJobsResponse,
    Progress,
)
from jupyter_staging.engine.progress import RateMeter
from jupyter_staging.engine.store import ChunkRecord, JobRecord, Store, utcnow
from jupyter_staging.errors import (
    DestinationExists,
    InvalidRequest,
    InvalidState,
    JobNotFound,
    PathNotAllowed,
    SourceNotFound,
    StagingError,
)
from jupyter_staging.safety.paths import resolve_destination
from jupyter_staging.safety.redact import install_log_filters, redact_text, redact_url
from jupyter_staging.safety.sealed import SecretBox
from jupyter_staging.sources.base import Source
from jupyter_staging.sources.registry import open_source

log = logging.getLogger(__name__)

Listener = Callable[[dict[str, Any]], None]

#: Minimum seconds between two persisted / announced progress updates of one job.
PROGRESS_INTERVAL = 0.25


def default_name(source: str) -> str:
    """A readable job name from a source: the file or folder name without its extension."""
    if "://" in source:
        path = unquote(urlsplit(source).path)
    else:
        path = source
    base = PurePosixPath(path.rstrip("/")).name or "staging"
    for suffix in (".gz", ".bz2", ".fz"):
        if base.endswith(suffix):
            base = base[: -len(suffix)]
    stem = base.rsplit(".", 1)[0] if "." in base[1:] else base
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in stem).strip("._")
    return safe[:100] or "staging"


class LiveProgress:
    """Counters a running job updates from its worker thread (bytes, rows) and their rate."""

    def __init__(self, bytes_done: int = 0, rows_done: int = 0) -> None:
        self.bytes_done = bytes_done
        self.rows_done = rows_done
        self.meter = RateMeter()
        self.rate: float | None = None
        self.last_flush = 0.0
        self.lock = threading.Lock()


class StagingManager:
    """Owns the jobs of one staging area.

    Parameters
    ----------
    root_dir:
        Folder destinations are relative to and confined in (the Jupyter server's ``root_dir``).
    db_url:
        SQLAlchemy URL of the job database (``sqlite:///path.db`` by default).
    staging_dir:
        Default parent folder of destinations, relative to ``root_dir``.
    source_roots:
        When set, the only local folders a job may read.
    max_concurrent_jobs:
        Jobs running at once; others wait ``queued``.
    executor_class:
        :class:`~jupyter_staging.engine.executors.Executor` subclass running the jobs.
    presign_expiry_seconds:
        Validity of the presigned GET URLs handed out for chunks in object storage, seconds (1 s - 7 days).
    secret_key_file:
        Key file sealing secret-bearing sources (presigned URLs) in the database
        (:mod:`jupyter_staging.safety.sealed`). Default: ``<database file>.key`` beside a SQLite database file; for
        other databases a key held in memory (such jobs then cannot resume after a restart).
    scratch_dir:
        Local folder (relative to ``root_dir``, or absolute) where jobs writing to object storage prepare
        their files before uploading them. Default: ``<staging_dir>/.staging-scratch``.
    """

    def __init__(
        self,
        root_dir: str | os.PathLike[str],
        *,
        db_url: str,
        staging_dir: str = "staging",
        source_roots: list[str] | None = None,
        max_concurrent_jobs: int = 4,
        executor_class: type[Executor] = LocalExecutor,
        default_owner: str | None = None,
        sweep_interval: float = 10.0,
        presign_expiry_seconds: int = 3600,
        secret_key_file: str | os.PathLike[str] | None = None,
        scratch_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        install_log_filters()
        self.root_dir = Path(root_dir).resolve()
        self.staging_dir = staging_dir
        self.source_roots = list(source_roots) if source_roots else None
        self.max_concurrent_jobs = max_concurrent_jobs
        self.presign_expiry_seconds = int(presign_expiry_seconds)
        self.scratch_root = self.root_dir / (
            scratch_dir or f"{staging_dir.strip('/') or '.'}/{SCRATCH_FOLDER}"
        )
        self.store = Store(db_url)
        if secret_key_file is None:
            secret_key_file = _default_key_file(db_url)
            if secret_key_file is None:
                log.warning(
                    "staging: no secret_key_file for %s; jobs reading presigned URLs will not resume after a "
                    "restart",
                    self.store.engine.url.render_as_string(hide_password=True),
                )
        self.secrets = SecretBox(secret_key_file)
        self.executor = executor_class(max_concurrent_jobs)
        self.default_owner = default_owner or _current_user()
        self._listeners: list[Listener] = []
        self._controls: dict[str, Any] = {}
        self._live: dict[str, LiveProgress] = {}
        self._lock = threading.RLock()
        self._create_lock = threading.Lock()
        self._done = threading.Condition(self._lock)
        self._stopped = False
        #: Identifies this process as the runner of the jobs it submits (``host:pid``).
        self.runner_id = f"{socket.gethostname()}:{os.getpid()}"
        self.sweep_interval = sweep_interval
        self._sweeper: threading.Thread | None = None
        self._sweep_stop = threading.Event()

    # -- life cycle ---------------------------------------------------------------------------------

    def start(self) -> list[str]:
        """Recover after a restart: jobs left ``running`` or ``queued`` are queued again and resume from
        their partial files. Returns the ids of the jobs resubmitted."""
        resumed = []
        for rec in self.store.list_jobs(
            root=str(self.root_dir), states=[JobState.running.value, JobState.queued.value], limit=100000
        ):
            if rec.runner and rec.runner != self.runner_id and _runner_alive(rec.runner):
                continue  # another live process (a second kernel, a script) runs it
            if rec.state == JobState.running.value:
                self._log(rec.id, "warning", "the server stopped while this job ran; resuming it")
                self._set_state(rec.id, JobState.queued)
            resumed.append(rec.id)
        for job_id in reversed(resumed):  # oldest first
            self._submit(job_id)
        if self.sweep_interval > 0 and self._sweeper is None:
            self._sweeper = threading.Thread(target=self._sweep_loop, name="staging-ttl-sweeper", daemon=True)
            self._sweeper.start()
        return resumed

    def _sweep_loop(self) -> None:
        while not self._sweep_stop.wait(self.sweep_interval):
            try:
                self.sweep()
            except Exception:
                log.exception("staging TTL sweep failed")

    def sweep(self, now: datetime | None = None) -> list[str]:
        """Expire finished jobs whose ``expires_at`` has passed: remove their output, mark their chunks
        and the job ``expired``. Returns the ids expired. Runs every ``sweep_interval`` seconds."""
        now = now or utcnow()
        expired = []
        final = [JobState.succeeded.value, JobState.failed.value, JobState.cancelled.value]
        for rec in self.store.list_jobs(root=str(self.root_dir), states=final, limit=100000):
            if rec.expires_at is None or rec.expires_at > now:
                continue
            self._expire(rec)
            expired.append(rec.id)
        return expired

    def _expire(self, rec: JobRecord) -> None:
        from jupyter_staging.engine.runner import remove_job_output

        try:
            removed = remove_job_output(self, rec, keep_ready=False)
        except StagingError as exc:  # the store is unreachable: the next sweep tries again
            log.warning("staging job %s: could not expire its output: %s", rec.id, redact_text(exc.message))
            return
        for chunk in self.store.list_chunks(rec.id):
            if chunk.state != ChunkState.expired.value:
                self.store.update_chunk(chunk.id, state=ChunkState.expired.value)
        self._log(rec.id, "info", f"expired: output removed ({removed} file(s))")
        self._set_state(rec.id, JobState.expired)

    def apply_cleanup_policy(self, job_id: str, outcome: JobState | None = None) -> None:
        """When a job ends: ``delete_on_success`` (if it succeeded) and ``delete_always`` remove its
        output — for an object store, every object below the job's prefix; chunks become ``expired``.
        ``retain`` and ``delete_on_ack`` keep what is left.

        ``outcome`` is the final state the job is about to be given (the runner cleans up *before*
        announcing it, so a client that sees ``succeeded`` never sees the output still there); default:
        its present state."""
        rec = self._record(job_id, None)
        policy = rec.cleanup_policy
        state = (outcome or JobState(rec.state)).value
        if policy == "delete_always" or (policy == "delete_on_success" and state == JobState.succeeded.value):
            from jupyter_staging.engine.runner import remove_job_output

            try:
                removed = remove_job_output(self, rec, keep_ready=False)
            except StagingError as exc:
                self._log(job_id, "warning", f"cleanup policy {policy}: output not removed: {exc.message}")
                return
            for chunk in self.store.list_chunks(rec.id):
                self.store.update_chunk(chunk.id, state=ChunkState.expired.value)
            self._log(job_id, "info", f"cleanup policy {policy}: output removed ({removed} file(s))")
            self._announce(self._record(job_id, None))

    def stop(self, wait: bool = True) -> None:
        """Pause nothing, persist progress and stop workers. Running jobs stay ``running`` in the
        database so that the next :meth:`start` resumes them."""
        self._stopped = True
        self._sweep_stop.set()
        with self._lock:
            controls = list(self._controls.values())
        for control in controls:
            control.interrupt("shutdown")
        self.executor.shutdown(wait=wait)
        self.store.close()

    # -- listeners ----------------------------------------------------------------------------------

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener(event)`` on every job change; returns a function that unsubscribes.

        ``event`` is ``{"type": "job", "job": <DescribeJob as JSON dict>}``. Listeners are called from
        worker threads and must not block.
        """
        with self._lock:
            self._listeners.append(listener)

        def unsubscribe() -> None:
            with self._lock:
                if listener in self._listeners:
                    self._listeners.remove(listener)

        return unsubscribe

    def _announce(self, rec: JobRecord) -> None:
        with self._lock:
            listeners = list(self._listeners)
            self._done.notify_all()
        if not listeners:
            return
        event = {"type": "job", "job": self._describe(rec).model_dump(mode="json")}
        for listener in listeners:
            try:
                listener(event)
            except Exception:  # a broken listener must not break a job
                log.exception("staging event listener failed")

    # -- public API ---------------------------------------------------------------------------------

    def create(self, request: CreateJob, owner: str | None = None) -> tuple[DescribeJob, bool]:
        """Validate ``request``, persist a ``queued`` job and submit it.

        Returns ``(job, created)``; ``created`` is False when an earlier job of ``owner`` had the same
        ``idempotency_key`` (that job is returned unchanged).

        A source (or manifest entry) holding secrets is stored redacted, its raw form sealed
        (:mod:`jupyter_staging.safety.sealed`). An ``s3://bucket/prefix/`` destination becomes the job's own
        prefix ``s3://bucket/prefix/<job_id>/``.

        Raises :class:`InvalidRequest` / :class:`~jupyter_staging.errors.PathNotAllowed` (400) for bad
        input (codes ``invalid_method``, ``unsupported_source``, ``unsupported_destination``,
        ``invalid_destination``, ``destination_not_found``...), :class:`SourceNotFound` (400) for a
        missing local source (a missing manifest entry fails later, alone) and :class:`DestinationExists`
        (409) when the destination already holds a job's output.
        """
        owner = owner or self.default_owner
        remote = is_object_destination(request.destination)
        if remote and request.method in ("hardlink", "symlink"):
            raise InvalidRequest(
                f"method {request.method!r} cannot write to object storage; use copy or download",
                code="invalid_method",
            )
        if remote and request.destination is not None:
            check_object_destination(object_destination(request.destination, "check"))
        with self._create_lock:
            if request.idempotency_key:
                existing = self.store.find_by_idempotency_key(owner, request.idempotency_key)
                if existing is not None:
                    return self._describe(existing), False
            if request.manifest is not None:
                method = self._check_entries(request)
                described = f"manifest of {len(request.manifest)} entries"
                name = request.name or "manifest"
                shown_source = _manifest_label(len(request.manifest))
                entries: dict[str, str] | None = {k: redact_url(v) for k, v in request.manifest.items()}
                raw: dict[str, Any] = {"entries": request.manifest}
                secret = entries != request.manifest
            else:
                assert request.source is not None
                source = open_source(request.source, source_roots=self.source_roots)
                method = request.method or source.default_method
                if method not in source.methods:
                    raise InvalidRequest(
                        f"method {method!r} does not apply to this source; "
                        f"use one of {', '.join(source.methods)}",
                        code="invalid_method",
                    )
                described = source.describe()
                name = request.name or default_name(request.source)
                shown_source, entries = redact_url(request.source), None
                raw = {"source": request.source}
                secret = shown_source != request.source
            if request.convert is not None and method in ("hardlink", "symlink"):
                raise InvalidRequest(
                    f"conversion to Parquet writes new files; it cannot be combined with method {method!r}",
                    code="invalid_method",
                )
            job_id = str(uuid.uuid4())
            if remote:
                assert request.destination is not None
                rel = object_destination(request.destination, job_id)
            else:
                rel = self._local_destination(request.destination, name, job_id)
            now = utcnow()
            expires = now + timedelta(seconds=request.ttl_seconds) if request.ttl_seconds else None
            rec = JobRecord(
                id=job_id,
                owner=owner,
                root=str(self.root_dir),
                name=name,
                source=shown_source,
                entries=entries,
                sealed=self.secrets.seal(raw) if secret else None,
                destination=rel,
                method=method,
                convert=request.convert.model_dump() if request.convert else None,
                state=JobState.queued.value,
                bytes_done=0,
                chunks_done=0,
                rows_done=0,
                cleanup_policy=request.cleanup_policy,
                idempotency_key=request.idempotency_key,
                ttl_seconds=request.ttl_seconds,
                created_at=now,
                updated_at=now,
                expires_at=expires,
                resume={},
            )
            self.store.add_job(rec)
        self._log(job_id, "info", f"job created: {described} -> {rel} ({method})")
        self._announce(rec)
        self._submit(job_id)
        return self._describe(rec), True

    def _local_destination(self, destination: str | None, name: str, job_id: str) -> str:
        """The checked destination folder, relative to ``root_dir`` (see :meth:`create`)."""
        if destination is None:
            destination = f"{self.staging_dir.strip('/')}/{default_name(name)}"
            dest_path, rel = resolve_destination(self.root_dir, destination)
            if dest_path.exists():
                destination = f"{destination}-{job_id[:8]}"
        dest_path, rel = resolve_destination(self.root_dir, destination)
        if (dest_path / MANIFEST_NAME).exists():
            raise DestinationExists(
                f"destination {rel!r} already holds a staged job's output; choose another folder"
            )
        if self._destination_in_use(rel):
            raise DestinationExists(f"destination {rel!r} is used by another active job")
        return rel

    def _check_entries(self, request: CreateJob) -> str:
        """Check every manifest entry as :meth:`create` checks a source; returns the job's method.

        Bad input (an unsupported scheme, a path outside the source roots) refuses the whole job; a local
        entry that does not exist does not (it fails alone when the job runs). Without a ``method`` in the
        request each entry uses its own default (the job shows ``download`` when any entry is remote).
        """
        assert request.manifest is not None
        methods: list[str] = []
        for entry, uri in request.manifest.items():
            try:
                source: Source | None = open_source(uri, source_roots=self.source_roots)
            except SourceNotFound:
                source = None  # reported when the job runs, as this entry's error
            except (InvalidRequest, PathNotAllowed) as exc:
                raise type(exc)(f"manifest entry {entry!r}: {exc.message}", code=exc.code) from None
            if source is None:
                continue
            if request.method is not None and request.method not in source.methods:
                raise InvalidRequest(
                    f"manifest entry {entry!r}: method {request.method!r} does not apply to this source; "
                    f"use one of {', '.join(source.methods)}",
                    code="invalid_method",
                )
            methods.append(source.default_method)
        if request.method is not None:
            return request.method
        return "download" if "download" in methods or not methods else "copy"

    def raw_sources(self, rec: JobRecord) -> tuple[str, dict[str, str] | None]:
        """The job's source and manifest entries as submitted, secrets included (unsealed).

        For the job runner only: never log, show or store what this returns. Raises
        :class:`~jupyter_staging.errors.SecretUnavailable` when the sealing key changed."""
        if rec.sealed:
            raw = self.secrets.open(rec.sealed)
            return str(raw.get("source") or rec.source), raw.get("entries") or rec.entries
        return rec.source, rec.entries

    def destination_of(self, rec: JobRecord) -> Destination:
        """The :class:`~jupyter_staging.destinations.core.Destination` of job ``rec``."""
        return open_destination(
            rec.id, rec.destination, root_dir=self.root_dir, scratch_root=self.scratch_root
        )

    def get(self, job_id: str, owner: str | None = None) -> DescribeJob:
        """The job's status and progress. Raises :class:`JobNotFound` (404) for unknown or foreign ids."""
        return self._describe(self._record(job_id, owner))

    def list_jobs(self, owner: str | None = None, query: ListJobsQuery | None = None) -> ListJobsResponse:
        """Jobs of ``owner`` newest first, filtered by ``query.state``, ``query.limit`` per page.

        Raises :class:`InvalidRequest` for a malformed cursor.
        """
        query = query or ListJobsQuery()
        owner = owner or self.default_owner
        before = None
        if query.cursor:
            before = _decode_cursor(query.cursor)
        states = [query.state.value] if query.state else None
        recs = self.store.list_jobs(
            owner, root=str(self.root_dir), states=states, limit=query.limit + 1, before=before
        )
        more = len(recs) > query.limit
        recs = recs[: query.limit]
        next_cursor = _encode_cursor(recs[-1]) if more and recs else None
        return ListJobsResponse(jobs=[self._describe(r) for r in recs], next_cursor=next_cursor)

    def cancel(self, job_id: str, owner: str | None = None) -> DescribeJob:
        """Cancel a job and remove its partial output (and its output, for ``delete_always``).

        Cancelling a finished job is a no-op that returns it. Raises :class:`JobNotFound`.
        """
        rec = self._record(job_id, owner)
        state = JobState(rec.state)
        if state.is_final:
            return self._describe(rec)
        if state == JobState.running:
            self._request(job_id, JobState.cancelled)
            return self.wait(job_id, timeout=30, owner=owner)
        self._finish_cancelled(job_id)
        return self.get(job_id, owner)

    def _request(self, job_id: str, wanted: JobState) -> None:
        """Ask the runner of a running job to pause or cancel: in this process through its control,
        in another process (a shared database) through the ``requested`` column it polls."""
        self.store.update_job(job_id, requested=wanted.value)
        with self._lock:
            control = self._controls.get(job_id)
        if control is not None:
            control.interrupt(wanted.value)

    def pause(self, job_id: str, owner: str | None = None) -> DescribeJob:
        """Stop moving bytes at the next block and keep the partial files; ``resume`` continues.

        Raises :class:`InvalidState` (409) unless the job is queued, running or already paused.
        """
        rec = self._record(job_id, owner)
        state = JobState(rec.state)
        if state == JobState.paused:
            return self._describe(rec)
        if state not in (JobState.queued, JobState.running):
            raise InvalidState(f"a {state.value} job cannot be paused")
        with self._lock:
            queued_here = job_id in self._controls
        if state == JobState.running or queued_here:
            self._request(job_id, JobState.paused)
            self.wait(
                job_id, timeout=30, owner=owner, until=lambda s: s not in (JobState.running, JobState.queued)
            )
        else:
            self._set_state(job_id, JobState.paused)
        self._log(job_id, "info", "paused")
        return self.get(job_id, owner)

    def resume(self, job_id: str, owner: str | None = None) -> DescribeJob:
        """Queue a paused job again; it continues from its partial files.

        Raises :class:`InvalidState` (409) unless the job is paused (a queued or running job is returned
        as it is).
        """
        rec = self._record(job_id, owner)
        state = JobState(rec.state)
        if state in (JobState.queued, JobState.running):
            return self._describe(rec)
        if state != JobState.paused:
            raise InvalidState(f"a {state.value} job cannot be resumed")
        self.store.update_job(job_id, requested=None)
        self._set_state(job_id, JobState.queued)
        self._log(job_id, "info", "resumed")
        self._submit(job_id)
        return self.get(job_id, owner)

    def chunks(self, job_id: str, owner: str | None = None, *, urls: bool = True) -> list[DescribeChunk]:
        """The job's chunks in index order. Raises :class:`JobNotFound`.

        With ``urls``, every ready chunk in object storage (and every acked one whose object is kept)
        carries a presigned GET URL valid :attr:`presign_expiry_seconds` from now, and its expiry. URLs
        are made for this answer only (locally: SigV4 presigning is an HMAC, no request) and never
        stored, logged or announced, so nothing changes on a read."""
        rec = self._record(job_id, owner)
        chunks = self.store.list_chunks(job_id)
        if not urls or not is_object_destination(rec.destination):
            return [_describe_chunk(c) for c in chunks]
        destination = self.destination_of(rec)
        return [self._with_url(destination, rec, c) for c in chunks]

    def refresh_chunk(self, job_id: str, chunk_id: str, owner: str | None = None) -> DescribeChunk:
        """Chunk ``chunk_id`` (its index) with a new presigned GET URL valid
        :attr:`presign_expiry_seconds` from now (SigV4 query signing, ``X-Amz-Expires``).

        Raises :class:`JobNotFound` (code ``chunk_not_found``), :class:`InvalidRequest` (400, code
        ``chunk_not_in_object_storage``) for a chunk of a local destination — a file has no URL — and
        :class:`InvalidState` (409, code ``chunk_not_ready``) for a chunk not uploaded yet, or whose
        object is gone (``expired``, or acked under ``delete_on_ack``), and (409, code
        ``cannot_presign``) when the destination's credentials cannot sign a URL (Azure without an
        account key)."""
        rec = self._record(job_id, owner)
        chunk = self._chunk(job_id, chunk_id)
        if not is_object_destination(rec.destination):
            raise InvalidRequest(
                f"chunk {chunk.index} is a file in {rec.destination!r}, not an object in object storage; "
                "only object-store chunks have presigned URLs",
                code="chunk_not_in_object_storage",
            )
        described = self._with_url(self.destination_of(rec), rec, chunk, strict=True)
        if described.url is None:
            raise InvalidState(
                f"chunk {chunk.index} is {chunk.state}; it has no object to hand out", code="chunk_not_ready"
            )
        return described

    def _with_url(
        self, destination: Destination, rec: JobRecord, chunk: ChunkRecord, *, strict: bool = False
    ) -> DescribeChunk:
        """The chunk with its URL; a destination that ``cannot_presign`` (Azure credentials without an
        account key) leaves it out of a listing and raises when ``strict`` (a refresh)."""
        described = _describe_chunk(chunk)
        kept = chunk.state == ChunkState.ready.value or (
            chunk.state == ChunkState.acked.value and rec.cleanup_policy != "delete_on_ack"
        )
        if kept and "://" in chunk.path:
            try:
                signed = destination.presign(chunk.path, self.presign_expiry_seconds)
            except InvalidState as exc:
                if strict or exc.code != "cannot_presign":
                    raise
                signed = None
            if signed is not None:
                described.url, described.url_expires_at = signed
        return described

    def _chunk(self, job_id: str, chunk_id: str) -> ChunkRecord:
        try:
            index = int(chunk_id)
        except ValueError:
            raise JobNotFound(f"no chunk {chunk_id!r} in job {job_id!r}", code="chunk_not_found") from None
        chunk = self.store.get_chunk(job_id, index)
        if chunk is None:
            raise JobNotFound(f"no chunk {chunk_id!r} in job {job_id!r}", code="chunk_not_found")
        return chunk

    def ack(self, job_id: str, chunk_id: str, owner: str | None = None) -> DescribeChunk:
        """Record that a consumer has read chunk ``chunk_id`` (its index); with the ``delete_on_ack``
        policy its file is deleted at once. Acking twice is harmless.

        Raises :class:`JobNotFound` (code ``chunk_not_found``) and :class:`InvalidState` (code
        ``chunk_not_ready``) for a chunk whose file is not complete yet.
        """
        rec = self._record(job_id, owner)
        chunk = self._chunk(job_id, chunk_id)
        index = chunk.index
        if chunk.state == ChunkState.pending.value:
            raise InvalidState(f"chunk {index} is not ready yet", code="chunk_not_ready")
        if chunk.state == ChunkState.ready.value:
            chunk = self.store.update_chunk(chunk.id, state=ChunkState.acked.value) or chunk
            self._log(job_id, "info", f"chunk {index} acknowledged")
            if rec.cleanup_policy == "delete_on_ack" and self.destination_of(rec).remove_chunk(chunk.path):
                self._log(job_id, "info", f"chunk {index} deleted on ack: {chunk.path}")
            self._announce(self._record(job_id, owner))
        return _describe_chunk(chunk)

    def manifest(self, job_id: str, owner: str | None = None) -> dict[str, Any]:
        """The manifest of a succeeded job, or of a manifest job that failed with code ``partial`` (it
        lists what was staged and which entries failed); for an object store it is read back from
        ``prefix/<job_id>/manifest.json`` (GetObject).

        Raises :class:`JobNotFound`, and :class:`InvalidState` (code ``manifest_not_ready``) until the job
        has succeeded.
        """
        rec = self._record(job_id, owner)
        written = rec.state == "succeeded" or (rec.state == "failed" and rec.error_code == "partial")
        manifest = self.destination_of(rec).read_manifest() if written else None
        if manifest is None or manifest.get("job_id") != job_id:
            raise InvalidState(
                f"job is {rec.state}; its manifest is written when it succeeds", code="manifest_not_ready"
            )
        return manifest

    def job_log(self, job_id: str, owner: str | None = None, limit: int = 1000) -> list[dict[str, Any]]:
        """The job's log lines, oldest first: ``{"time", "level", "message"}``.

        Raises :class:`JobNotFound`."""
        self._record(job_id, owner)
        return [
            {"time": e.time.isoformat().replace("+00:00", "Z"), "level": e.level, "message": e.message}
            for e in self.store.list_events(job_id, limit=limit)
        ]

    def wait(
        self,
        job_id: str,
        timeout: float | None = None,
        owner: str | None = None,
        until: Callable[[JobState], bool] | None = None,
    ) -> DescribeJob:
        """Block until the job reaches a final state (or ``until(state)`` holds), at most ``timeout``
        seconds; returns the job as it then is."""
        until = until or (lambda s: s.is_final)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            rec = self._record(job_id, owner)
            if until(JobState(rec.state)):
                return self._describe(rec)
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return self._describe(rec)
            with self._done:
                self._done.wait(timeout=0.5 if remaining is None else min(0.5, remaining))

    # -- internals ----------------------------------------------------------------------------------

    def _record(self, job_id: str, owner: str | None) -> JobRecord:
        rec = self.store.get_job(job_id)
        if rec is None or rec.root != str(self.root_dir) or (owner is not None and rec.owner != owner):
            raise JobNotFound(f"no staging job {job_id!r}")
        return rec

    def _destination_in_use(self, rel: str) -> bool:
        active = [JobState.queued.value, JobState.running.value, JobState.paused.value]
        for rec in self.store.list_jobs(root=str(self.root_dir), states=active, limit=100000):
            if rec.destination == rel:
                return True
        return False

    def _describe(self, rec: JobRecord) -> DescribeJob:
        live = self._live.get(rec.id)
        bytes_done = rec.bytes_done
        rows_done = rec.rows_done
        rate = None
        if live is not None:
            bytes_done = max(bytes_done, live.bytes_done)
            rows_done = max(rows_done, live.rows_done)
            rate = live.rate
        eta = None
        if rate and rec.bytes_total is not None and rec.state == JobState.running.value:
            eta = max(0.0, (rec.bytes_total - bytes_done) / rate)
        error = JobError(code=rec.error_code, message=rec.error_message or "") if rec.error_code else None
        return DescribeJob(
            id=rec.id,
            name=rec.name,
            owner=rec.owner,
            state=JobState(rec.state),
            source=redact_url(rec.source),
            entries=list(rec.entries) if rec.entries is not None else None,
            destination=rec.destination,
            method=rec.method,  # type: ignore[arg-type]
            convert=ConvertOptions(**rec.convert) if rec.convert else None,
            progress=Progress(
                bytes_done=bytes_done,
                bytes_total=rec.bytes_total,
                chunks_done=rec.chunks_done,
                chunks_total=rec.chunks_total,
                rows_done=rows_done,
                rate=rate,
                eta_seconds=eta,
            ),
            error=error,
            cleanup_policy=rec.cleanup_policy,  # type: ignore[arg-type]
            idempotency_key=rec.idempotency_key,
            created_at=rec.created_at,
            updated_at=rec.updated_at,
            started_at=rec.started_at,
            finished_at=rec.finished_at,
            expires_at=rec.expires_at,
        )

    def _set_state(self, job_id: str, state: JobState, **fields: Any) -> JobRecord:
        rec = self.store.get_job(job_id)
        if rec is None:
            raise JobNotFound(f"no staging job {job_id!r}")
        current = JobState(rec.state)
        if state != current and state not in TRANSITIONS[current]:
            raise InvalidState(f"a {current.value} job cannot become {state.value}")
        if state.is_final:
            fields.setdefault("finished_at", utcnow())
            # The raw source is needed to run, not to remember: drop the sealed copies.
            fields.setdefault("sealed", None)
            if rec.resume:
                fields.setdefault("resume", _without_sealed(rec.resume))
        updated = self.store.update_job(job_id, state=state.value, **fields)
        assert updated is not None
        self._announce(updated)
        return updated

    def _log(self, job_id: str, level: str, message: str) -> None:
        message = redact_text(message)
        self.store.add_event(job_id, level, message)
        getattr(log, level if level in ("info", "warning", "error") else "info")(
            "staging job %s: %s", job_id, message
        )

    def _submit(self, job_id: str) -> None:
        if self._stopped:
            return
        from jupyter_staging.engine.runner import JobRunner

        runner = JobRunner(self, job_id)
        self.store.update_job(job_id, runner=self.runner_id)
        with self._lock:
            self._controls[job_id] = runner.control
        self.executor.submit(runner.run)

    def _finish_cancelled(self, job_id: str) -> None:
        from jupyter_staging.engine.runner import remove_job_output

        rec = self._record(job_id, None)
        try:
            remove_job_output(self, rec, keep_ready=False)
        except StagingError as exc:
            self._log(job_id, "warning", f"partial output not removed: {exc.message}")
        self.store.update_job(job_id, requested=None)
        self._set_state(job_id, JobState.cancelled)
        self._log(job_id, "info", "cancelled; partial output removed")

    # Called by JobRunner ------------------------------------------------------------------------------

    def _progress(self, job_id: str, *, force: bool = False) -> None:
        live = self._live.get(job_id)
        if live is None:
            return
        now = time.monotonic()
        with live.lock:
            if not force and now - live.last_flush < PROGRESS_INTERVAL:
                return
            live.last_flush = now
            live.rate = live.meter.sample(live.bytes_done, now)
            bytes_done, rows_done = live.bytes_done, live.rows_done
        rec = self.store.update_job(job_id, bytes_done=bytes_done, rows_done=rows_done)
        if rec is not None:
            if rec.requested in (JobState.paused.value, JobState.cancelled.value):
                with self._lock:
                    control = self._controls.get(job_id)
                if control is not None and not control.interrupted:
                    control.interrupt(rec.requested)
            self._announce(rec)

    def _fail(self, job_id: str, error: StagingError | Exception) -> None:
        if isinstance(error, StagingError):
            code, message = error.code, error.message
        else:
            import traceback

            # The traceback may quote a URL (a library's exception message): redact it as a log line.
            text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
            log.error("staging job %s failed unexpectedly:\n%s", job_id, redact_text(text))
            code, message = "internal_error", f"unexpected error: {type(error).__name__}"
        message = redact_text(message)
        self._log(job_id, "error", f"failed: {message} ({code})")
        self.apply_cleanup_policy(job_id, JobState.failed)
        self._set_state(job_id, JobState.failed, error_code=code, error_message=message, requested=None)

    def _release(self, job_id: str) -> None:
        with self._lock:
            self._controls.pop(job_id, None)
            self._live.pop(job_id, None)


def _runner_alive(runner: str) -> bool:
    """True when ``runner`` (``host:pid``) is a live process on this host; False when it is gone or
    cannot be checked from here (another host)."""
    host, _, pid = runner.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _current_user() -> str:
    try:
        return getpass.getuser()
    except Exception:
        return "user"


def _encode_cursor(rec: JobRecord) -> str:
    import base64

    raw = f"{rec.created_at.isoformat()}|{rec.id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    import base64

    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        created, job_id = raw.split("|", 1)
        when = datetime.fromisoformat(created)
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        return when, job_id
    except Exception:
        raise InvalidRequest("malformed cursor", code="invalid_cursor") from None


def _describe_chunk(c: ChunkRecord) -> DescribeChunk:
    return DescribeChunk(
        id=str(c.index),
        index=c.index,
        path=c.path,
        state=ChunkState(c.state),
        rows=c.rows,
        bytes=c.bytes,
        sha256=c.sha256,
        content_type=c.content_type,
        entry=c.entry,
        error=JobError(code=c.error_code, message=c.error_message or "") if c.error_code else None,
    )


def _manifest_label(entries: int) -> str:
    """The ``source`` shown for a manifest job: ``manifest:4 entries``."""
    return f"manifest:{entries} {'entry' if entries == 1 else 'entries'}"


def _default_key_file(db_url: str) -> Path | None:
    """``<database file>.key`` for a SQLite database file, else None (an in-memory key)."""
    from sqlalchemy.engine import make_url

    url = make_url(db_url)
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return None
    if url.database.startswith("file:"):
        return None
    return Path(url.database + ".key")


def _without_sealed(resume: dict[str, Any]) -> dict[str, Any]:
    """The runner's resume data without the sealed locators of its items (``items`` and
    ``entries.<name>.items``; see ``JobRunner._dump_item`` in :mod:`jupyter_staging.engine.runner`)."""

    def items(values: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{k: v for k, v in item.items() if k != "sealed"} for item in values]

    resume = dict(resume)
    if "items" in resume:
        resume["items"] = items(resume["items"])
    if "entries" in resume:
        resume["entries"] = {
            name: {**entry, "items": items(entry.get("items", []))} if "items" in entry else entry
            for name, entry in resume["entries"].items()
        }
    return resume


__all__ = ["StagingManager", "default_name", "remove_tree_if_empty"]
