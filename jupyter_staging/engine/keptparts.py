"""The part files a job that failed ``source_expired`` kept, removed once nothing can continue them.

Such a job keeps its ``.part`` files (and finished ranges) in its local folder so that a submit with its URL
presigned again continues it (:mod:`~jupyter_staging.engine.refresh`). Only the newest job of a folder is
revived: once another job is admitted into that folder, the kept files are dead. They are removed then, by
:func:`drop_kept_parts`, before the new job runs (which would otherwise set one of them aside under another
name, or carry it into its swapped-in output as if it were the user's). What goes is what the job's own
failure would have removed (:func:`~jupyter_staging.engine.cleanup.remove_job_output` keeping published
files): its ``.part`` and scratch files only, each carrying the job's owner tag; never a file of the
user's. The TTL sweep and the cleanup policies that remove output remove them as they remove the rest.
"""

from __future__ import annotations

from jupyter_staging.engine.cleanup import remove_job_output
from jupyter_staging.engine.host import JobHost
from jupyter_staging.engine.models import JobState
from jupyter_staging.engine.refresh import REVIVABLE_CODES
from jupyter_staging.engine.store import JobRecord
from jupyter_staging.errors import as_staging_error
from jupyter_staging.safety.redact import redact_text


def drop_kept_parts(host: JobHost, job_id: str, newer: JobRecord) -> int:
    """Remove the part files that job ``job_id`` of ``host`` kept when it failed ``source_expired``, now
    that job ``newer`` was admitted into its folder (``job_id`` can no longer be revived). Nothing is done
    unless ``job_id`` is still failed with that code. Returns the number of files removed; the job's log
    says what went. Never raises: a file that cannot be removed is a warning in that log."""
    rec = host.store.get_job(job_id)
    if rec is None or rec.state != JobState.failed.value or rec.error_code not in REVIVABLE_CODES:
        return 0
    try:
        removed = remove_job_output(host, rec, keep_ready=True)
    except Exception as exc:  # the new job goes on whatever is left here
        known = as_staging_error(exc)
        why = redact_text(known.message) if known is not None else type(exc).__name__
        host.log_event(job_id, "warning", f"the partial files kept for a new URL were not removed: {why}")
        return 0
    if removed:
        host.log_event(
            job_id,
            "info",
            f"job {newer.id} now stages into {newer.destination or '/'}, so this job can no longer be "
            f"continued: the {removed} partial file(s) it kept were removed",
        )
    return removed
