"""How long a job's output stays: the TTL sweep that expires finished jobs, and the cleanup policies applied
as a job ends (``delete_on_success``, ``delete_always``; ``retain`` and ``delete_on_ack`` keep the output).
Both work through the :class:`~jupyter_staging.engine.host.JobHost` of the jobs (their manager)."""

from __future__ import annotations

import logging
import threading
import zlib
from datetime import datetime

from jupyter_staging.engine.acks import chunk_states_present, expire_chunks
from jupyter_staging.engine.cleanup import remove_job_output
from jupyter_staging.engine.host import JobHost
from jupyter_staging.engine.models import ChunkState, JobState
from jupyter_staging.engine.store import JobRecord, utcnow
from jupyter_staging.engine.transitions import StateChanged, in_state
from jupyter_staging.errors import JobNotFound, StagingError
from jupyter_staging.safety.redact import redact_text

log = logging.getLogger("jupyter_staging.engine.manager")

#: The states a job is expired from (its output removed): it has ended and is not expired yet.
_EXPIRABLE = (JobState.succeeded.value, JobState.failed.value, JobState.cancelled.value)
_STRIPES = tuple(threading.Lock() for _ in range(32))


def sweep(host: JobHost, now: datetime | None = None) -> list[str]:
    """Expire the finished jobs of ``host``'s root whose ``expires_at`` is at or before ``now`` (default:
    now): remove their output, mark their chunks and the job ``expired``. Returns the ids due (a job
    whose output cannot be removed, the store unreachable, is logged and left for the next sweep; so is one
    failing with any other error, and the sweep goes on with the others)."""
    now = now or utcnow()
    expired = []
    final = [JobState.succeeded.value, JobState.failed.value, JobState.cancelled.value]
    due = host.store.list_jobs(root=str(host.root_dir), states=final, limit=100000, expires_before=now)
    for rec in due:  # only the jobs due: a sweep of 10,000 finished jobs reads none of the others
        try:
            _expire(host, rec)
        except Exception as exc:  # one job's unplanned failure never keeps the others from expiring
            why = f"{type(exc).__name__}: {redact_text(str(exc))[:200]}"
            log.warning("staging job %s: could not expire its output: %s", rec.id, why)
        expired.append(rec.id)
    return expired


def _expire(host: JobHost, rec: JobRecord, *, keep_acked: bool = False) -> bool:
    """Remove job ``rec``'s output and mark it and its chunks ``expired`` -- its ``acked`` chunks stay
    ``acked`` with ``keep_acked`` (their files went at their ack, which a repeated ack answers again).

    Once: two expiries of one job at once (the last two acks under ``delete_on_ack``, an ack and the TTL
    sweep) take turns in this process, and the second finds the job expired and does nothing; in another
    process, the state change is a compare-and-set, and only the first writes the ``expired`` line. True
    when this call expired it."""
    with _expiring(rec.id):
        now = host.store.get_job(rec.id, resume=True)
        if now is None or now.state not in _EXPIRABLE:
            return False
        try:
            removed = remove_job_output(host, now, keep_ready=False)
        except StagingError as exc:  # the store unreachable, a folder not writable: the next sweep retries
            log.warning("staging job %s: could not expire its output: %s", rec.id, redact_text(exc.message))
            return False
        except OSError as exc:  # EIO, say: logged, and the sweep goes on with the other jobs due
            why = exc.strerror or type(exc).__name__  # never the path it names
            log.warning("staging job %s: could not expire its output: %s", rec.id, why)
            return False
        try:  # the job, its chunks and the line: one transaction
            host.set_state(
                rec.id,
                JobState.expired,
                events=[("info", f"expired: output removed ({removed} file(s))")],
                when=in_state(*(JobState(s) for s in _EXPIRABLE)),
                expire_chunks=not keep_acked,
            )
        except StateChanged:  # expired by another process meanwhile
            return False
        return True


def _expiring(job_id: str) -> threading.Lock:
    """The lock this process's expiries of job ``job_id`` take turns at (one of a few, by its id)."""
    return _STRIPES[zlib.crc32(job_id.encode()) % len(_STRIPES)]


def expire_if_consumed(host: JobHost, job_id: str) -> bool:
    """After an acknowledgement under ``delete_on_ack``: a finished job every file of which was consumed
    and deleted at its ack -- ``succeeded`` with no chunk ``ready`` or ``pending``; ``failed`` with one
    chunk ``acked`` at least and none ``ready`` (its ``pending`` ones, a failed entry's or item's, were
    never published; they count unless it failed ``source_expired``, whose part file a URL signed again
    continues) -- has the rest of its output removed too (its ``manifest.json``, and its folder when
    the job made it and it is left empty) and is ``expired``. Before, its folder stayed for good with the
    manifest of files that were gone (a hub ``jupyter_copy``'s scratch folder, which a service that is
    neither root nor the user may not remove). Its acknowledged chunks stay ``acked``: their reads were
    recorded, and acking one again (a retried request) answers it as before rather than ``chunk_expired``.
    True when it was expired. Raises :class:`JobNotFound`."""
    rec = _record(host, job_id, resume=False)
    finished = (JobState.succeeded.value, JobState.failed.value)
    if rec.cleanup_policy != "delete_on_ack" or rec.state not in finished:
        return False
    # Which states its chunks are in, not the chunks (nor the resume data, read once it is expired): every
    # ack asks, and reading them made acking each of 20,000 chunks O(chunks) -- 0.6 s per ack.
    present = chunk_states_present(host.store, rec.id, (s.value for s in ChunkState))
    unread = {ChunkState.ready.value, ChunkState.pending.value}
    if rec.state == JobState.failed.value:
        if ChunkState.acked.value not in present:
            return False  # nothing it published was read: it stays failed
        if rec.error_code != "source_expired":  # else its part file is kept for the URL signed again
            unread.discard(ChunkState.pending.value)  # a failed entry's or item's: never published
    if not present or present & unread:
        return False
    if not _expire(host, rec, keep_acked=True):
        return False
    if rec.state == JobState.failed.value:  # its never published chunks: no file will come
        expire_chunks(host.store, rec.id, keep=(ChunkState.acked.value, ChunkState.expired.value))
    return True


def expire_at_end(host: JobHost, job_id: str) -> None:
    """When a ``delete_on_ack`` job has just ended: :func:`expire_if_consumed`, for a job whose every
    chunk a consumer acknowledged while it still ran (the last ack came before its end, so no ack will
    expire it). A failure is a warning in the job's log: the job keeps the state it ended with."""
    try:
        expire_if_consumed(host, job_id)
    except StagingError as exc:
        host.log_event(job_id, "warning", f"consumed output not removed: {exc.message}")


def apply_cleanup_policy(
    host: JobHost, job_id: str, outcome: JobState | None = None, *, policy: str | None = None
) -> None:
    """When job ``job_id`` of ``host`` ends: ``delete_on_success`` (if it succeeded) and ``delete_always``
    remove its output — for an object store, every object below the job's prefix; chunks become
    ``expired``. ``retain`` and ``delete_on_ack`` keep what is left.

    ``outcome`` is the final state the job is about to be given (the runner cleans up *before* announcing
    it, so a client that sees ``succeeded`` never sees the output still there); default: its present state.
    ``policy``: the job's cleanup policy when the caller has its record (a policy that keeps the output then
    costs no read). Raises :class:`JobNotFound` for a job that is not of ``host``'s root; an output that
    cannot be removed is a warning in the job's log."""
    if policy in ("retain", "delete_on_ack") and outcome is not None:
        return
    rec = _record(host, job_id, resume=False)
    policy = rec.cleanup_policy
    state = (outcome or JobState(rec.state)).value
    if policy == "delete_always" or (policy == "delete_on_success" and state == JobState.succeeded.value):
        try:
            removed = remove_job_output(host, _record(host, job_id, resume=True), keep_ready=False)
        except StagingError as exc:
            host.log_event(job_id, "warning", f"cleanup policy {policy}: output not removed: {exc.message}")
            return
        for chunk in host.store.list_chunks(rec.id):
            host.store.update_chunk(chunk.id, state=ChunkState.expired.value)
        host.log_event(job_id, "info", f"cleanup policy {policy}: output removed ({removed} file(s))")
        host.announce(_record(host, job_id, resume=True))


def _record(host: JobHost, job_id: str, *, resume: bool) -> JobRecord:
    rec = host.store.get_job(job_id, resume=resume)
    if rec is None or rec.root != str(host.root_dir):
        raise JobNotFound(f"no staging job {job_id!r}")
    return rec
