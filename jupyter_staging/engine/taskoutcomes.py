"""What a Dask task of a job hands back to the server besides its result: :func:`on_worker` runs every task
and returns an error that running the task again would only repeat (:data:`FINAL_ERRORS`) as a
:class:`TaskFailed` (Dask runs a task that raises again); :class:`BatchFailure` is what an isolated
:class:`~jupyter_staging.engine.taskset.TaskBatch` hands back for a task that failed."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from jupyter_staging import errors
from jupyter_staging.errors import StagingError, as_staging_error
from jupyter_staging.safety.dirfd import WRITER

#: Errors of a task that running it again would only repeat: the bytes do not match the digest the source
#: states (a 1 GiB file would be fetched three times to fail three times), a path or request refused, a
#: source that changed since it was listed, a table that does not convert, a destination refused or full
#: (``ENOSPC`` / ``EDQUOT`` on the worker: :func:`~jupyter_staging.errors.as_staging_error`). Other errors
#: are retried: a connection that kept breaking, an ``OSError`` of the worker's own, and a source not
#: found or refused, which may be a worker's missing mount or credentials.
FINAL_ERRORS: tuple[type[StagingError], ...] = (
    errors.ChecksumMismatch,
    errors.ConversionFailed,
    errors.DestinationExists,
    errors.DestinationNotShared,
    errors.DestinationNotWritable,
    errors.InvalidRequest,
    errors.NoSpace,
    errors.SecretUnavailable,
    errors.SourceChanged,
    errors.UnsafeArchive,
)


@dataclasses.dataclass
class TaskFailed:
    """What a task returns instead of raising one of :data:`FINAL_ERRORS` (Dask retries any task that
    raises); :meth:`~jupyter_staging.engine.taskset.TaskBatch.results` raises ``error`` in the server."""

    error: StagingError


def on_worker(fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
    """Run task ``fn(*args, **kwargs)`` on a Dask worker, a folder it may not write into named as the
    worker's user's (:data:`~jupyter_staging.safety.dirfd.WRITER`), not the server's: the worker may run
    as another user. Returns what ``fn`` returns, or a :class:`TaskFailed` holding an error of
    :data:`FINAL_ERRORS` it raised; raises its other errors."""
    token = WRITER.set("the Dask worker's user")
    try:
        return fn(*args, **kwargs)
    except Exception as exc:
        known = as_staging_error(exc)
        if isinstance(known, FINAL_ERRORS):
            return TaskFailed(known)
        raise
    finally:
        WRITER.reset(token)


@dataclasses.dataclass
class BatchFailure:
    """What :meth:`~jupyter_staging.engine.taskset.TaskBatch.results` of an isolated batch hands back for a
    task that failed (its ``error``, raised on the worker or returned as :class:`TaskFailed`, or a
    :class:`~jupyter_staging.errors.WorkerKilled`), instead of stopping the batch and raising it; ``key``
    is the task's (for :meth:`~jupyter_staging.engine.taskset.JobTasks.take_back`)."""

    error: Exception
    key: str
