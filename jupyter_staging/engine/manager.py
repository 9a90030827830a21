"""The staging manager: creates, runs, steers and recovers jobs.

This is the engine every surface calls — the server extension, the hub service, scripts and the
in-process fallback of the magics. It is synchronous and thread-safe; it imports nothing from tornado,
Jupyter or IPython. Callers on an event loop call it from a worker thread.

The verbs are here; admission of a request is :mod:`~jupyter_staging.engine.admission`, the job's life
around its runs (state changes, events, recovery, TTL, cleanup) is
:mod:`~jupyter_staging.engine.lifecycle`, one run is :mod:`~jupyter_staging.engine.runner`.
"""

from __future__ import annotations

import os
import re
from functools import partial
from pathlib import Path
from typing import Any

from jupyter_staging.destinations.base import remove_tree_if_empty, scratch_root_of
from jupyter_staging.destinations.registry import is_object_destination
from jupyter_staging.engine.ackfolders import AckFolders
from jupyter_staging.engine.acks import take_ack
from jupyter_staging.engine.admission import Admission, default_name
from jupyter_staging.engine.chunkpages import Describe, read_chunk_page
from jupyter_staging.engine.chunkurls import chunk_expired, refreshed, with_url
from jupyter_staging.engine.cleanup import published_file
from jupyter_staging.engine.describe import decode_cursor, describe_chunk, encode_cursor
from jupyter_staging.engine.executors import (
    DEFAULT_CONCURRENT_ITEMS,
    DEFAULT_STREAMS_PER_FILE,
    Executor,
    LocalExecutor,
)
from jupyter_staging.engine.expansion import DEFAULT_MAX_UNPACKED_BYTES
from jupyter_staging.engine.keptparts import drop_kept_parts
from jupyter_staging.engine.leases import DEFAULT_HEARTBEAT_INTERVAL
from jupyter_staging.engine.lifecycle import echo_event, log
from jupyter_staging.engine.manifests import JobManifests
from jupyter_staging.engine.models import (
    ChunkList,
    ChunkState,
    CreateJob,
    DescribeChunk,
    DescribeJob,
    JobState,
    ListJobsQuery,
    ListJobsResponse,
)
from jupyter_staging.engine.placement import ACTIVE_STATES
from jupyter_staging.engine.processes import SERVER, check_kind, current_user, default_key_file
from jupyter_staging.engine.refresh import Refresh, kept_parts_job
from jupyter_staging.engine.retention import expire_if_consumed
from jupyter_staging.engine.store import ChunkRecord, JobRecord, Store
from jupyter_staging.engine.transitions import StateChanged
from jupyter_staging.errors import InvalidRequest, InvalidState, JobNotFound
from jupyter_staging.safety.redact import install_log_filters
from jupyter_staging.safety.sealed import SecretBox

#: A chunk id in a URL: its index, as ASCII digits without leading zero (at most 19: a 64-bit integer).
_CHUNK_INDEX = re.compile(r"0|[1-9][0-9]{0,18}")


class StagingManager(JobManifests):
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
    executor_options:
        Keyword arguments of ``executor_class`` beyond ``max_workers`` (for
        :class:`~jupyter_staging.engine.executors.DaskExecutor`: ``scheduler_address``, ``gateway``,
        ``local_workers``, ``range_bytes``).
    max_unpacked_bytes:
        Most bytes one archive or compressed file may expand to (``unpack`` / ``decompress``).
    concurrent_items:
        Files of one job staged at the same time (a job of many small files: each file's open, copy,
        fsync and publish overlap with the others'); at least 1 (:class:`ValueError` otherwise).
        Conversions and unpacking stay one item at a time.
    streams_per_file:
        Byte ranges of one large download (64 MiB and up, from HTTP with ranges, S3 or Azure) fetched at
        once (:mod:`jupyter_staging.engine.streams`); 1: one stream. At least 1 (:class:`ValueError`).
    presign_expiry_seconds:
        Validity of the presigned GET URLs handed out for chunks in object storage, seconds (1 s - 7 days).
    secret_key_file:
        Key file sealing secret-bearing sources (presigned URLs) in the database
        (:mod:`jupyter_staging.safety.sealed`). Default: ``<database file>.key`` beside a SQLite database
        file; for
        other databases a key held in memory (such jobs then cannot resume after a restart).
    scratch_dir:
        Local folder (relative to ``root_dir``, or absolute; ``~`` expanded, ``..`` taken out) where jobs
        writing to object storage prepare their files before uploading them
        (:func:`~jupyter_staging.destinations.base.scratch_root_of`). Default:
        ``<staging_dir>/.staging-scratch``. One outside ``root_dir`` is made (mode 0700) when missing and
        must be a folder no other account controls: a job starting with it otherwise fails
        ``path_not_allowed``.
    min_free_bytes:
        Bytes that must stay free on a local destination's file system: a job whose known size (local
        files, an HTTP ``Content-Length``, an S3 / Azure listing) would leave less is refused at creation
        with ``insufficient_space`` (409). 0 (the default): no check, and no listing at creation.
    quota_bytes:
        Most bytes the local output of this root's jobs may hold together (queued, running and paused jobs
        count their announced total); a job that would go beyond it is refused with
        ``insufficient_space``. 0 (the default): no quota.
    raise_open_files:
        Raise the process's soft open-file limit (``RLIMIT_NOFILE``) to the hard one, at most 65,536, when
        :meth:`start` runs (:mod:`jupyter_staging.safety.descriptors`); processes started afterwards inherit
        it. Off by default: a kernel's or a script's limits are theirs. The server extension turns it on
        (``StagingApp.raise_open_file_limit``). Either way each job keeps a share of the limit it finds.
    heartbeat_interval:
        Seconds between two renewals of the leases on this process's queued and running jobs (one
        ``UPDATE`` for all of them; :mod:`~jupyter_staging.engine.leases`). A server of another host sharing
        the job database takes such a job over only once its lease has gone three intervals unrenewed.
        Positive (:class:`ValueError` otherwise).
    runner_kind:
        The kind of engine this is (:data:`~jupyter_staging.engine.processes.RUNNER_KINDS`): ``"server"``
        (a Jupyter server, a script) or ``"kernel"`` (a kernel's in-process engine). It takes over only the
        jobs of dead runners of its own kind: a kernel on a server's job database leaves the server's jobs
        to the server. Another kind raises :class:`ValueError`.
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
        executor_options: dict[str, Any] | None = None,
        default_owner: str | None = None,
        sweep_interval: float = 10.0,
        presign_expiry_seconds: int = 3600,
        max_unpacked_bytes: int = DEFAULT_MAX_UNPACKED_BYTES,
        concurrent_items: int = DEFAULT_CONCURRENT_ITEMS,
        streams_per_file: int = DEFAULT_STREAMS_PER_FILE,
        secret_key_file: str | os.PathLike[str] | None = None,
        scratch_dir: str | os.PathLike[str] | None = None,
        min_free_bytes: int = 0,
        quota_bytes: int = 0,
        raise_open_files: bool = False,
        heartbeat_interval: float = DEFAULT_HEARTBEAT_INTERVAL,
        runner_kind: str = SERVER,
    ) -> None:
        install_log_filters()
        check_kind(runner_kind)  # before the database is opened
        root = Path(root_dir).resolve()
        self.staging_dir = staging_dir
        self.max_concurrent_jobs = max_concurrent_jobs
        self.presign_expiry_seconds = int(presign_expiry_seconds)
        self.max_unpacked_bytes = int(max_unpacked_bytes)
        if int(concurrent_items) < 1:
            raise ValueError(f"concurrent_items must be at least 1, not {concurrent_items}")
        self.concurrent_items = int(concurrent_items)
        if int(streams_per_file) < 1:
            raise ValueError(f"streams_per_file must be at least 1, not {streams_per_file}")
        self.streams_per_file = int(streams_per_file)
        store = Store(db_url)
        if secret_key_file is None:
            secret_key_file = default_key_file(db_url)
            if secret_key_file is None:
                log.warning(
                    "staging: no secret_key_file for %s; jobs reading presigned URLs will not resume after a "
                    "restart",
                    store.engine.url.render_as_string(hide_password=True),
                )
        super().__init__(
            store=store,
            secrets=SecretBox(secret_key_file),
            root_dir=root,
            scratch_root=scratch_root_of(root, staging_dir, scratch_dir),
            source_roots=list(source_roots) if source_roots else None,
            executor=executor_class(max_concurrent_jobs, **(executor_options or {})),
            sweep_interval=sweep_interval,
            heartbeat_interval=heartbeat_interval,
            raise_open_files=raise_open_files,
            runner_kind=runner_kind,
        )
        self.default_owner = default_owner or current_user()
        self._ack_folders = AckFolders()  # jobs whose output is in place: no resume data read per ack
        self.admission = Admission(
            self.store,
            self.secrets,
            root_dir=self.root_dir,
            staging_dir=staging_dir,
            source_roots=self.source_roots,
            min_free_bytes=min_free_bytes,
            quota_bytes=quota_bytes,
            runner_id=self.runner_id,
            lease=self.lease_until,
        )

    # -- public API ---------------------------------------------------------------------------------

    def create(
        self, request: CreateJob, owner: str | None = None, *, start: bool = True
    ) -> tuple[DescribeJob, bool]:
        """Validate ``request``, persist a ``queued`` job and submit it (with ``start=False`` the caller
        submits a created job itself, ``submit(job.id, recorded=True)``, e.g. once its answer is written,
        so that the job's first steps do not compete with the answer).

        Returns ``(job, created)``; ``created`` is False when an earlier job answers the request: one of
        ``owner`` with the same ``idempotency_key``, the same request still queued / running / paused in
        that folder, or (``if_exists="reuse"``, the default) an earlier job of the same source(s) and
        options whose every source fingerprint still matches — then ``job.up_to_date`` is True and no byte
        moves. When a source changed (or ``if_exists="refresh"``) the new job stages beside the old output
        and swaps it in when complete (DESIGN.md, "Re-running a notebook").

        A request naming the same objects as a queued, running or paused job, or as one that failed
        ``source_expired``, through presigned URLs signed again (only their signing parameters differ) gives
        that job the new URLs (:mod:`~jupyter_staging.engine.refresh`): the answer is the job with
        ``source_refreshed`` True; a paused job reads them when resumed, the failed one is queued again
        (started here, whatever ``start`` says) and continues from the part files it kept.

        A source (or manifest entry) holding secrets is stored redacted, its raw form sealed
        (:mod:`jupyter_staging.safety.sealed`). An ``s3://bucket/prefix/`` destination becomes the job's own
        prefix ``s3://bucket/prefix/<job_id>/``.

        Raises :class:`InvalidRequest` / :class:`~jupyter_staging.errors.PathNotAllowed` (400) for bad
        input (codes ``invalid_method``, ``unsupported_source``, ``unsupported_destination``,
        ``invalid_destination``, ``destination_not_found``...), :class:`SourceNotFound` (400) for a
        missing local source (a missing manifest entry fails later, alone) and :class:`DestinationExists`
        (409) when the destination holds another request's output (or any output, with
        ``if_exists="error"``), or another request's job is writing there, and
        :class:`~jupyter_staging.errors.InsufficientSpace` (409, code ``insufficient_space``) when the
        job's known size would leave less than ``min_free_bytes`` free or exceed ``quota_bytes``.
        """
        owner = owner or self.default_owner
        admitted = self.admission.admit(request, owner)
        rec = admitted.record
        if admitted.up_to_date:
            self.log_event(rec.id, "info", "asked again: up to date (every source unchanged), no bytes moved")
            return self.describe(rec).model_copy(update={"up_to_date": True}), False
        if admitted.refresh is not None:  # the same objects' URLs presigned again: the job takes them
            return self._take_refresh(rec, admitted.refresh), False
        if not admitted.created:  # another request's job, perhaps running: its counters, then its record
            return self.current(rec.id), False
        # Admission stored the job, its runner (this process) and its first log lines in one commit. Its
        # runner is made now, so a pause or cancel reaches it even before it is started; a job in the
        # database is started whatever happens below (else it would wait, queued, for a restart).
        self.prepare(rec.id)
        try:
            if admitted.superseded is not None:  # before the new job runs into that folder
                drop_kept_parts(self, admitted.superseded, rec)
            for level, message in admitted.creation_lines():
                echo_event(rec.id, level, message)
            self.announce(rec)
            described = self.describe(rec)
        except BaseException:
            self.submit(rec.id, recorded=True)
            raise
        if start:
            self.submit(rec.id, recorded=True)
        return described, True

    def _take_refresh(self, rec: JobRecord, refresh: Refresh) -> DescribeJob:
        """Job ``rec`` with the presigned URL(s) of ``refresh`` sealed in place of its own, its log saying
        so (:mod:`~jupyter_staging.engine.refresh`); one that failed ``source_expired`` is queued again and
        started. The answer's ``source_refreshed`` is True. When the job changed meanwhile (it ended, or
        another submit revived it first) it is answered as it is, ``source_refreshed`` False."""

        def same(now: JobRecord) -> bool:  # as admission found it
            if refresh.revive:  # still the newest job of its folder: a job admitted there since removes
                # the part files it kept (engine/keptparts.py), and the two would write into one folder
                head = kept_parts_job(self.store, now.root, now.destination)
                return head is not None and head.id == now.id and now.error_code == rec.error_code
            return now.state in ACTIVE_STATES

        def still(now: JobRecord) -> dict[str, Any]:
            if not same(now):
                raise StateChanged(f"job {rec.id} is {now.state} now")
            return {}

        line = ("info", refresh.log_line(rec))
        try:
            if refresh.revive:  # failed -> queued: its runner (this process) recorded with the state
                self.set_state(
                    rec.id,
                    JobState.queued,
                    events=[line],
                    when=same,
                    sealed=refresh.sealed,
                    error_code=None,
                    error_message=None,
                    finished_at=None,
                    requested=None,
                    runner=self.runner_id,
                    lease_expires_at=self.lease_until(),
                )
            else:
                self.announce(self.update_job(rec.id, events=[line], defaults=still, sealed=refresh.sealed))
        except StateChanged:
            return self.current(rec.id)
        if refresh.revive:
            self.prepare(rec.id)
            self.submit(rec.id, recorded=True)
        return self.current(rec.id).model_copy(update={"source_refreshed": True})

    def get(self, job_id: str, owner: str | None = None) -> DescribeJob:
        """The job's status and progress. Raises :class:`JobNotFound` (404) for unknown or foreign ids."""
        return self.current(job_id, owner)

    def list_jobs(self, owner: str | None = None, query: ListJobsQuery | None = None) -> ListJobsResponse:
        """Jobs of ``owner`` newest first, filtered by ``query.state``, ``query.limit`` per page.

        Raises :class:`InvalidRequest` for a malformed cursor.
        """
        query = query or ListJobsQuery()
        owner = owner or self.default_owner
        before = None
        if query.cursor:
            before = decode_cursor(query.cursor)
        states = [query.state.value] if query.state else None
        live = self.live_counters()  # before the records are read (see live_counters)
        recs = self.store.list_jobs(
            owner, root=str(self.root_dir), states=states, limit=query.limit + 1, before=before, resume=False
        )
        more = len(recs) > query.limit
        recs = recs[: query.limit]
        next_cursor = encode_cursor(recs[-1]) if more and recs else None
        return ListJobsResponse(jobs=[self.describe(r, live) for r in recs], next_cursor=next_cursor)

    def chunks(self, job_id: str, owner: str | None = None, *, urls: bool = True) -> list[DescribeChunk]:
        """The job's chunks in index order. Raises :class:`JobNotFound`.

        With ``urls``, every ready chunk in object storage (and every acked one whose object is kept)
        carries a presigned GET URL valid :attr:`presign_expiry_seconds` from now, and its expiry. URLs
        are made for this answer only (locally: SigV4 presigning is an HMAC, no request) and never
        stored, logged or announced, so nothing changes on a read."""
        describe = self.describer(job_id, owner, urls=urls)
        return [describe(c) for c in self.store.list_chunks(job_id)]

    def chunk_page(
        self, job_id: str, owner: str | None = None, *, offset: int = 0, limit: int | None = None
    ) -> ChunkList:
        """The job's chunks of index ``>= offset`` in index order, at most ``limit`` (None: all), and
        ``total``, how many the job has; only the chunks returned get a presigned URL (as :meth:`chunks`).
        ``offset`` / ``limit`` as :class:`ChunksQuery` validates them. Raises :class:`JobNotFound`."""
        return read_chunk_page(self.store, job_id, self.describer(job_id, owner), offset=offset, limit=limit)

    def _chunk_job(self, job_id: str, owner: str | None) -> JobRecord:
        """The job whose chunks are listed: its resume data (megabytes for 20,000 files, 0.1 s to read) only
        for an object-store destination, whose URLs need it (:meth:`destination_of`)."""
        rec = self._record(job_id, owner, resume=False)
        return self._record(job_id, owner) if is_object_destination(rec.destination) else rec

    def describer(self, job_id: str, owner: str | None = None, *, urls: bool = True) -> Describe:
        """What makes the API view of each chunk of job ``job_id`` (with ``urls``, as :meth:`chunks`), for
        :func:`~jupyter_staging.engine.chunkpages.read_chunk_page`. Raises :class:`JobNotFound`."""
        rec = self._chunk_job(job_id, owner)
        if not urls or not is_object_destination(rec.destination):
            return describe_chunk
        return partial(with_url, self.destination_of(rec), rec, expiry=self.presign_expiry_seconds)

    def refresh_chunk(self, job_id: str, chunk_id: str, owner: str | None = None) -> DescribeChunk:
        """Chunk ``chunk_id`` (its index) with a new presigned GET URL valid
        :attr:`presign_expiry_seconds` from now (SigV4 query signing, ``X-Amz-Expires``).

        Raises :class:`JobNotFound` (code ``chunk_not_found``), :class:`InvalidRequest` (400, code
        ``chunk_not_in_object_storage``) for a chunk of a local destination — a file has no URL — and
        :class:`InvalidState` (409) with code ``chunk_not_ready`` for a chunk not uploaded yet,
        ``chunk_expired`` for one whose object is gone for good (``expired``, or acked under
        ``delete_on_ack``, or removed from the store behind the job's back: the one HEAD of a refresh
        finds it missing), and ``cannot_presign`` when the destination's
        credentials cannot sign a URL (Azure without an account key);
        :class:`~jupyter_staging.errors.DestinationUnavailable` (503, ``destination_unavailable``) when the
        server's S3 endpoint setting is not a usable URL or the store cannot be reached."""
        rec = self._record(job_id, owner)
        chunk = self._chunk(job_id, chunk_id)
        if not is_object_destination(rec.destination):
            raise InvalidRequest(
                f"chunk {chunk.index} is a file in {rec.destination!r}, not an object in object storage; "
                "only object-store chunks have presigned URLs",
                code="chunk_not_in_object_storage",
            )
        return refreshed(self.destination_of(rec), rec, chunk, expiry=self.presign_expiry_seconds)

    def _chunk(self, job_id: str, chunk_id: str) -> ChunkRecord:
        # Only a chunk's index as written (ASCII digits, no sign, space, "_" or leading zero): "1_0" is not
        # chunk 10, which an ack under delete_on_ack would delete.
        index = int(chunk_id) if _CHUNK_INDEX.fullmatch(chunk_id) else None
        chunk = None if index is None else self.store.get_chunk(job_id, index)
        if chunk is None:
            raise JobNotFound(f"no chunk {chunk_id!r} in job {job_id!r}", code="chunk_not_found")
        return chunk

    def ack(self, job_id: str, chunk_id: str, owner: str | None = None) -> DescribeChunk:
        """Record that a consumer has read chunk ``chunk_id`` (its index); with the ``delete_on_ack``
        policy its file is deleted at once, and once a finished job has no chunk left ``ready`` or ``pending``
        its manifest and the folder it made go too and it is ``expired``
        (:func:`~jupyter_staging.engine.retention.expire_if_consumed`). Acking twice is harmless.

        Raises :class:`JobNotFound` (code ``chunk_not_found``), :class:`InvalidState` (409) with code
        ``chunk_not_ready`` for a chunk whose file is not complete yet and ``chunk_expired`` for one whose
        file clean-up removed (``expired``: a cancel, a cleanup policy, the TTL, a re-run's swap), and
        :class:`PathNotAllowed` (code ``path_not_allowed``, nothing deleted) under ``delete_on_ack`` when
        the destination folder became a symlink, and
        :class:`~jupyter_staging.errors.DestinationUnavailable` (503, ``destination_unavailable``, the chunk
        left ``ready``) under ``delete_on_ack`` when the server's S3 endpoint setting is not a usable URL or
        the store cannot be reached.
        """
        rec = self._record(job_id, owner, resume=False)
        chunk = self._chunk(job_id, chunk_id)
        index = chunk.index
        on_ack = rec.cleanup_policy == "delete_on_ack"
        destination = self._ack_folders.destination(self, rec) if on_ack else None
        if destination is not None:
            destination.confined()  # a folder swapped for a symlink: path_not_allowed
        if chunk.state == ChunkState.pending.value:
            raise InvalidState(f"chunk {index} is not ready yet", code="chunk_not_ready")
        if chunk.state == ChunkState.ready.value:
            # ready -> acked only if still ready, its file deleted in that transaction: a clean-up that
            # expired it first (a re-run's swap, the TTL, a cancel) wins, and this deletes nothing.
            remove, inside = None, True
            if destination is not None:
                found = published_file(rec, chunk)  # the swap may move it meanwhile: AckFolders finds it
                remove = partial(self._ack_folders.remove_chunk, self, rec, destination, chunk.path, found)
                inside = not destination.remote  # an object of this job's own prefix: no other job's
            won, state, removed = take_ack(self.store, chunk.id, remove, remove_inside=inside)
            if state is None:
                raise JobNotFound(f"no chunk {chunk_id!r} in job {job_id!r}", code="chunk_not_found")
            chunk.state = state
            if won:
                self.log_event(job_id, "info", f"chunk {index} acknowledged")
                if removed:
                    self.log_event(job_id, "info", f"chunk {index} deleted on ack: {chunk.path}")
                if not (on_ack and expire_if_consumed(self, job_id)):  # expiring announces it
                    self.announce(self._record(job_id, owner, resume=False))
        if chunk.state == ChunkState.expired.value:  # its file is gone: no read of it can be recorded
            raise chunk_expired(chunk.index, "its file was removed by clean-up")
        return describe_chunk(chunk)

    def job_log(self, job_id: str, owner: str | None = None, limit: int = 1000) -> list[dict[str, Any]]:
        """The job's log lines, oldest first: ``{"time", "level", "message"}``.

        Raises :class:`JobNotFound`."""
        self._record(job_id, owner, resume=False)
        return [
            {"time": e.time.isoformat().replace("+00:00", "Z"), "level": e.level, "message": e.message}
            for e in self.store.list_events(job_id, limit=limit)
        ]


__all__ = ["StagingManager", "default_name", "remove_tree_if_empty"]
