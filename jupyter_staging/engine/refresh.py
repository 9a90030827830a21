"""A source URL presigned again: a new submit refreshes the sealed URL of the job that answers it.

Job identity ignores the signing parameters of a presigned URL
(:func:`~jupyter_staging.engine.freshness.locator_identity`), so a notebook run again with a freshly signed
URL of the same object is answered by the earlier job. When that job still needs its URL — it is queued,
running or paused, or it failed ``source_expired`` (its URL expired while it was paused) — the URL it holds
sealed is replaced by the one submitted (:func:`refreshed_seal`): its next run reads the new URL, for the job
itself and for each listed item of that object (:func:`~jupyter_staging.engine.records.load_item`). A run
under way keeps the URL it started with; when that one expires (a range, a retry or a manifest entry
refused ``source_expired``), the job is queued again and its next run continues with the new URL
(:func:`continues_refreshed`) instead of failing.

A job that failed ``source_expired`` into a local folder kept its part files (:func:`keeps_part_files`); the
submit queues it again (``failed -> queued``, the one way out of a final state) and it continues from them,
as a resumed job does: the part file is resumed by the job that wrote it, and only when the object's
validator (ETag / ``If-Range``) still matches; a changed object restarts the file, never splices. A job that
failed for another reason is not revived: the submit makes a new job, as before. Only the newest job of a
folder is revived: a new job admitted into that folder removes the part files it kept
(:mod:`~jupyter_staging.engine.keptparts`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from jupyter_staging.destinations.registry import is_object_destination
from jupyter_staging.engine.host import JobHost
from jupyter_staging.engine.models import JobState
from jupyter_staging.engine.placement import ACTIVE_STATES, request_key_of
from jupyter_staging.engine.store import JobRecord, Store
from jupyter_staging.engine.transitions import JobEnded, StateChanged, held_by, in_state
from jupyter_staging.errors import SecretUnavailable
from jupyter_staging.safety.sealed import SecretBox

#: Error codes of a failed job that a submit with its URL presigned again queues once more.
REVIVABLE_CODES = frozenset({"source_expired"})

#: Every state, for the newest job of a folder whatever its state.
_ALL_STATES = [s.value for s in JobState]


@dataclass
class Refresh:
    """What a submit changes in the job that answers it: ``sealed``, the submitted source (or manifest
    entries) sealed; ``revive``: the job failed ``source_expired`` and is queued again."""

    sealed: str
    revive: bool = False

    def log_line(self, rec: JobRecord) -> str:
        """The job's log line saying so, without any URL (the answer's ``source_refreshed`` says it too)."""
        what = "the manifest entries' presigned URLs" if rec.entries else "the source's presigned URL"
        done = f"{what} refreshed by a new submit (same objects, new signatures)"
        if self.revive:
            return (
                f"{done}: queued again, continuing from the bytes kept (a changed object restarts its file)"
            )
        if rec.state == JobState.paused.value:
            return f"{done}: resume the job to continue with them from the bytes kept"
        if rec.state == JobState.running.value:
            return f"{done}: this run continues with them if the ones it started with expire"
        return f"{done}: the job's run reads them"


def keeps_part_files(code: str, *, remote: bool, policy: str = "retain") -> bool:
    """Whether a job failing with ``code`` keeps its part files: a ``source_expired`` failure into a local
    folder, so that a submit with the URL presigned again continues from them (not for object storage,
    whose unfinished uploads are removed as for any failure, nor under the cleanup ``policy``
    ``delete_always``, which removes the output of a failed job)."""
    return code in REVIVABLE_CODES and not remote and policy != "delete_always"


def continues_refreshed(rec: JobRecord, sealed_at_start: str | None, codes: Iterable[str]) -> bool:
    """Whether a run of job ``rec`` (as read after the run's failure) whose items failed with ``codes``
    is followed by another run rather than ending the job: one of them is ``source_expired`` and the job's
    sealed source is no longer ``sealed_at_start``, the one the run started with, because a submit of the
    URL presigned again gave the job a new one while it ran (:func:`refreshed_seal`). The next run reads
    the new URL and continues from the chunks and part files this one left, as a resumed run does; when
    its URL expires too, the job fails ``source_expired`` as before."""
    return (
        rec.state == JobState.running.value
        and rec.sealed is not None
        and rec.sealed != sealed_at_start
        and any(code in REVIVABLE_CODES for code in codes)
    )


def requeue_refreshed(
    host: JobHost, job_id: str, sealed_at_start: str | None, codes: Iterable[str], settle: Callable[[], None]
) -> bool:
    """Queue job ``job_id`` of ``host`` again, its chunks and part files kept, when its run's items failed
    with ``codes`` and the job is still this host's and :func:`continues_refreshed`; ``settle`` (the run
    recording what it published) is called first. True when queued: the caller submits the next run once
    its own has returned. False, nothing changed, otherwise (also when a state change came first)."""
    rec = host.store.get_job(job_id, resume=False)
    if rec is None or rec.runner != host.runner_id or not continues_refreshed(rec, sealed_at_start, codes):
        return False
    settle()
    try:
        host.set_state(
            job_id,
            JobState.queued,
            events=[("info", "the presigned URL this run started with expired: continuing with the new one")],
            when=held_by(host.runner_id, in_state(JobState.running)),
        )
    except (StateChanged, JobEnded):
        return False
    return True


def refreshed_seal(rec: JobRecord, raw: dict[str, Any], secret: bool, secrets: SecretBox) -> str | None:
    """``raw`` (``{"source": url}`` or ``{"entries": {...}}``, as admission seals it) sealed, when job
    ``rec`` should take it: ``rec`` is queued, running, paused or failed ``source_expired``, ``raw`` holds
    a secret (a presigned URL) and differs from what ``rec`` holds sealed (a failed job holds nothing: its
    secret was dropped as it ended). None otherwise. The caller has checked that the request is ``rec``'s
    (the same request key: the same objects and options)."""
    revivable = rec.state == JobState.failed.value and keeps_part_files(
        rec.error_code or "", remote=is_object_destination(rec.destination), policy=rec.cleanup_policy
    )
    if not secret or (rec.state not in ACTIVE_STATES and not revivable):
        return None
    if rec.sealed:
        try:
            if secrets.open(rec.sealed) == raw:
                return None
        except SecretUnavailable:  # sealed under a lost key: the new URL is all the job can run with
            pass
    return secrets.seal(raw)


def refresh_of(rec: JobRecord, raw: dict[str, Any], secret: bool, secrets: SecretBox) -> Refresh | None:
    """The :class:`Refresh` of job ``rec`` by a submit of ``raw`` (see :func:`refreshed_seal`), or None."""
    sealed = refreshed_seal(rec, raw, secret, secrets)
    if sealed is None:
        return None
    return Refresh(sealed, revive=rec.state == JobState.failed.value)


def expired_job(store: Store, root: str, rel: str, key: str) -> JobRecord | None:
    """The newest job of ``root`` writing to folder ``rel`` when it failed with a code of
    :data:`REVIVABLE_CODES` and was admitted with request key ``key``; None otherwise (also when a later
    job wrote there since)."""
    head = kept_parts_job(store, root, rel)
    if head is None:
        return None
    rec = store.get_job(head.id)  # with its resume data, which holds its request key
    return rec if rec is not None and request_key_of(rec) == key else None


def kept_parts_job(store: Store, root: str, rel: str) -> JobRecord | None:
    """The newest job of ``root`` writing to folder ``rel`` (without its resume data) when it failed with a
    code of :data:`REVIVABLE_CODES`, whatever its request: the job whose part files a submit with its URL
    presigned again would continue, and which a new job of that folder leaves unrevivable. None otherwise."""
    job_id = store.active_job_id(root, rel, _ALL_STATES)
    head = store.get_job(job_id, resume=False) if job_id is not None else None  # its state: one narrow read
    if head is None or head.state != JobState.failed.value or head.error_code not in REVIVABLE_CODES:
        return None
    return None if is_object_destination(head.destination) else head
