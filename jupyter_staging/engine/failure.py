"""Recording a run's failure: the job ends ``failed`` with an error code, through the
:class:`~jupyter_staging.engine.host.JobHost` of the job (its manager), if the job is still the host's."""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable
from typing import Any

from jupyter_staging.clouds.http import error_detail
from jupyter_staging.engine.database import DATABASE_DOWN, database_reason
from jupyter_staging.engine.host import JobHost
from jupyter_staging.engine.models import JobState
from jupyter_staging.engine.retention import expire_at_end
from jupyter_staging.engine.transitions import Guard, JobEnded, StateChanged, held_by
from jupyter_staging.errors import DatabaseUnavailable, StagingError, as_staging_error
from jupyter_staging.safety.control import JobControl
from jupyter_staging.safety.redact import redact_text

log = logging.getLogger("jupyter_staging.engine.manager")

#: Seconds before the first and, doubling, at most between two tries to record a run's failure while the
#: job database cannot be reached.
RECORD_RETRY_FIRST, RECORD_RETRY_MAX = 0.5, 5.0


def as_run_error(exc: Exception) -> Exception:
    """``exc``, or for a job database that could not be reached while the job ran a
    :class:`DatabaseUnavailable` naming the driver's reason (not an ``internal_error``)."""
    if isinstance(exc, DATABASE_DOWN):
        reason = database_reason(exc)
        return DatabaseUnavailable(f"the job database could not be reached while the job ran ({reason})")
    return exc


def record_once_reachable(record: Callable[[], None], control: JobControl, job_id: str) -> None:
    """Call ``record`` (the end of job ``job_id``'s run), again while the job database cannot be reached
    (:data:`~jupyter_staging.engine.database.DATABASE_DOWN`), waiting :data:`RECORD_RETRY_FIRST` seconds
    and more: a job must not stay ``running`` with no run left. Stops trying once the server stops or
    another server took the job over (``control`` interrupted so: the next start resumes the job, or it
    is the other run's). Any other error of ``record`` is raised."""
    delay = RECORD_RETRY_FIRST
    while True:
        try:
            record()
            return
        except DATABASE_DOWN as exc:
            reason = database_reason(exc)
            if control.reason in ("shutdown", "superseded"):
                log.warning(
                    "staging job %s: its end is not recorded (%s): %s", job_id, control.reason, reason
                )
                return
            log.warning(
                "staging job %s: cannot record its end now (%s); again in %.1f s", job_id, reason, delay
            )
        time.sleep(delay)
        delay = min(delay * 2, RECORD_RETRY_MAX)


def record_failure(
    host: JobHost, job_id: str, error: StagingError | Exception, when: Guard | None = None
) -> None:
    """End job ``job_id`` of ``host`` ``failed`` with the error's code: a :class:`StagingError`'s own,
    ``no_space`` for an :class:`OSError` saying the disk (or the disk quota) is full (``ENOSPC`` /
    ``EDQUOT``), else ``internal_error`` and the exception's type (its traceback, redacted, goes to this
    process's log only). A known error's technical cause (``__cause__``) is written to the job's log as one
    line. A job that has ended already (another server's run of it was first), or that another server took
    over, is left as it is, and this process's log says so (a warning, no traceback); so is one that does not
    pass ``when`` as read in the transaction that would end it (nothing logged). Raises
    :class:`~jupyter_staging.errors.JobNotFound`."""
    if not host.still_held(job_id):
        return
    known = as_staging_error(error)
    if known is not None:
        code, message = known.code, known.message
    else:
        # The traceback may quote a URL (a library's exception message): redact it as a log line.
        text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
        log.error("staging job %s failed unexpectedly:\n%s", job_id, redact_text(text))
        code, message = "internal_error", f"unexpected error: {type(error).__name__}"
    message = redact_text(message)
    lines = [("error", f"failed: {message} ({code})")]
    if known is not None and error.__cause__ is not None:
        # The one-line message is for people; the library's own words go to the job log only.
        lines.insert(0, ("info", f"cause: {redact_text(error_detail(error.__cause__))}"))
    try:
        host.apply_cleanup_policy(job_id, JobState.failed)
    except Exception as exc:  # the failure is recorded whatever its cleanup does
        cause = as_staging_error(exc)
        shown = cause.message if cause is not None else type(exc).__name__
        lines.append(("warning", f"cleanup policy not applied: {shown}"))
    fields: dict[str, Any] = {"error_code": code, "error_message": message, "requested": None}
    try:  # only while the job is this process's
        host.set_state(
            job_id,
            JobState.failed,
            events=lines,
            when=held_by(host.runner_id, when or (lambda rec: True)),
            **fields,
        )
    except (StateChanged, JobEnded):  # taken over, or ended, meanwhile
        host.still_held(job_id)
        return
    expire_at_end(host, job_id)  # delete_on_ack: every published chunk acknowledged before the failure
