"""Errors of the staging engine.

Every error the engine raises on purpose is a :class:`StagingError`: it carries a stable machine-readable
``code`` (clients branch on it; it is part of the wire contract), a human ``message`` that never holds a
traceback, a token or a presigned signature, and the HTTP ``status`` an adapter should answer with.
"""

from __future__ import annotations

import errno
import os
from typing import Any

#: ``errno`` values meaning "the file system is full" (no block left, or the user's disk quota reached).
NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})

#: ``errno`` values meaning "no file descriptor left" (the process's ``RLIMIT_NOFILE``, or the system's).
NO_DESCRIPTOR_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE})
#: ``errno`` of a write to a file system mounted read-only.
READ_ONLY_ERRNOS = frozenset({errno.EROFS})


class StagingError(Exception):
    """Base of every deliberate staging error.

    Parameters
    ----------
    message:
        What went wrong, for a person. Must not contain secrets.
    code:
        Stable identifier such as ``"source_not_found"``; defaults to the class's ``code``.
    status:
        HTTP status an adapter answers with (400 for bad input, 404 for unknown ids, ...).
    """

    code: str = "staging_error"
    status: int = 500

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status

    def to_dict(self) -> dict[str, Any]:
        """The error as the wire format's ``{"code", "message"}`` object."""
        return {"code": self.code, "message": self.message}

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickled with its code and status (a task on a Dask worker raises it in the server's process).
        return (_rebuild_error, (type(self), self.message, self.code, self.status))


def error_classes() -> list[type[StagingError]]:
    """:class:`StagingError` and every subclass of it this module defines, base first: one per ``code``
    (what a client maps an answer's ``code`` back to, what the docs' error table lists)."""
    found: list[type[StagingError]] = []
    pending: list[type[StagingError]] = [StagingError]
    while pending:
        cls = pending.pop(0)
        if cls.__module__ == __name__:
            found.append(cls)
        pending += cls.__subclasses__()
    return found


def _rebuild_error(cls: type[StagingError], message: str, code: str, status: int) -> StagingError:
    error = cls.__new__(cls)
    StagingError.__init__(error, message, code=code, status=status)
    return error


class InvalidRequest(StagingError):
    """The request is malformed or names something that is not allowed (HTTP 400)."""

    code = "invalid_request"
    status = 400


class PathNotAllowed(InvalidRequest):
    """A destination or source path escapes its allowed root, or targets a protected name (HTTP 400)."""

    code = "path_not_allowed"


class DestinationExists(StagingError):
    """The destination already holds a file the job would write; nothing is overwritten (HTTP 409)."""

    code = "destination_exists"
    status = 409

    @classmethod
    def not_overwritten(cls, name: str) -> DestinationExists:
        """The error for ``name`` (a file's name or path below the destination, never an absolute path)
        already being there: "<name> already exists in the destination; not overwritten"."""
        return cls(f"{name} already exists in the destination; not overwritten")


class DestinationNotShared(StagingError):
    """The job runs on a distributed executor whose workers cannot see the destination folder (a probe
    file a worker wrote there did not reach the server): nothing was staged (HTTP 409)."""

    code = "destination_not_shared"
    status = 409


class DestinationUnavailable(StagingError):
    """The folder jobs write below (the server's ``root_dir``) is missing or may not be entered: moved,
    deleted or unmounted while the server runs. Nothing was written; the same request succeeds once the
    folder is back (HTTP 503)."""

    code = "destination_unavailable"
    status = 503


class ClusterUnavailable(StagingError):
    """The Dask cluster could not be reached or made (``DaskExecutor``): a wrong address, refused
    credentials, a gateway that could not start the cluster; or it was lost while the job ran (its
    scheduler stopped, or restarted: Dask cancels every task it had), or stopped answering (a call waits
    30 s at most; while four calls to that scheduler are left waiting, the next fail at once). Submit the job
    again once the cluster is back (HTTP 503)."""

    code = "cluster_unavailable"
    status = 503


class AccessCheckUnavailable(StagingError):
    """The hub service, running as root, could not learn whether the user may read the source or write
    into the target folder: the short-lived process it starts as the user to ask the kernel could not
    start (no process left for the user, ``RLIMIT_NPROC``; its program missing) or did not answer in time
    (a hung network file system). Nothing is granted and nothing was written; submit the same request again
    once the file system answers (HTTP 503)."""

    code = "access_check_unavailable"
    status = 503


class WorkerKilled(StagingError):
    """A task of the job ran on Dask workers that all died while running it (``distributed.KilledWorker``,
    once ``distributed.scheduler.allowed-failures`` is spent): most often a worker out of memory. Nothing of
    that task was published. Give the workers more memory, then submit the job again (HTTP 502)."""

    code = "worker_killed"
    status = 502


class SourceNotFound(StagingError):
    """The source does not exist or cannot be read (HTTP 400 at creation, job error code later)."""

    code = "source_not_found"
    status = 400


class JobNotFound(StagingError):
    """No job (or chunk) with that id belongs to this owner (HTTP 404)."""

    code = "job_not_found"
    status = 404


class InvalidState(StagingError):
    """The job cannot do that in its present state, e.g. pausing a finished job (HTTP 409)."""

    code = "invalid_state"
    status = 409


class TransferFailed(StagingError):
    """Moving bytes failed after retries (network error, HTTP error status, S3 error)."""

    code = "transfer_failed"
    status = 502


class VerificationFailed(StagingError):
    """The bytes written do not match the size (or checksum) the source announced."""

    code = "verification_failed"


class ChecksumMismatch(VerificationFailed):
    """The bytes do not match a checksum the user expected (``"checksum": "sha256:<hex>"``) or the source
    stated (S3 ``ChecksumSHA256`` / single-part ETag, Azure ``Content-MD5``, HTTP ``Repr-Digest`` /
    ``Digest`` / ``Content-MD5``); nothing is published."""

    code = "checksum_mismatch"


class SizeMismatch(VerificationFailed):
    """The source sent more or fewer bytes than it announced, again after retries; nothing is published."""

    code = "size_mismatch"


class UnsafeArchive(StagingError):
    """An archive (``unpack``) or a compressed file (``decompress``) was refused: a member with an
    absolute name, ``..``, a link leaving the folder, a device file, or more bytes than allowed
    (``StagingApp.max_unpacked_bytes``, or an expansion over 100:1). ``code`` says which."""

    code = "unsafe_archive"
    status = 400


class SourceChanged(StagingError):
    """The source changed (ETag, size or mtime) between two parts of one transfer."""

    code = "source_changed"


class ConversionFailed(StagingError):
    """The source could not be converted to Parquet (not a table, unreadable, bad HDU index)."""

    code = "conversion_failed"
    status = 400


class SecretUnavailable(StagingError):
    """A job's sealed credentials (a presigned source URL) cannot be opened: the key file changed or is
    gone (:mod:`jupyter_staging.safety.sealed`); the job must be submitted again."""

    code = "secret_unavailable"
    status = 409


class PartiallyStaged(StagingError):
    """Some entries of a manifest job failed while others were staged (the job ends ``failed`` with
    code ``partial``; what was staged is kept and listed)."""

    code = "partial"


class NoSpace(StagingError):
    """The file system holding the output (or the scratch folder) filled up, or the user's disk quota was
    reached, while a job wrote (``ENOSPC`` / ``EDQUOT``). The item's part file is removed; other jobs and
    other manifest entries go on.

    HTTP 507 (Insufficient Storage): the server cannot store what the job asked for; the job's
    ``error_code`` is ``no_space``.
    """

    code = "no_space"
    status = 507


class InsufficientSpace(StagingError):
    """Refused at creation: the job's known total size (bytes) would leave less than
    ``StagingApp.min_free_bytes`` free on the destination's file system, or would take staged output
    beyond ``StagingApp.quota_bytes``. The message names both figures, in bytes and human units.

    HTTP 409 (Conflict): the request is well-formed but conflicts with the present state of the storage;
    it may succeed once space is freed (413 would wrongly blame the request body).
    """

    code = "insufficient_space"
    status = 409


class DestinationNotWritable(StagingError):
    """Nothing can be written at the destination: its file system is mounted read-only (``statvfs``'s
    ``ST_RDONLY``, ``EROFS``), or its nearest existing folder may not be written into by this server's
    user (``access(2)``). Refused at creation; a job whose file system became read-only while it ran fails
    with this code, nothing written under a final name.

    HTTP 409 (Conflict): the request is well-formed but conflicts with the present state of the storage
    (a dataset folder a site mounts read-only into the user's area, a group folder without write
    permission); another destination succeeds.
    """

    code = "destination_not_writable"
    status = 409


class DatabaseTooNew(StagingError):
    """The job database (or the hub service's operations database) records a schema revision this
    release does not know: a later release of jupyter_staging upgraded it, and this one was installed
    since (a downgrade of the package). Nothing is read or written until the release that knows the
    revision is installed again, or the database is downgraded with it (HTTP 503: the server's state, not
    the request's)."""

    code = "database_newer_than_code"
    status = 503


class DatabaseUnavailable(StagingError):
    """The job database could not be opened when the server started (its server down or unreachable, a
    wrong URL or password, a SQLite file locked by another process past the busy timeout): staging stays
    off until the server is restarted with the database reachable. Or it cannot be reached now, the server
    running (its server stopped or restarting): requests are answered again once it is back (HTTP 503)."""

    code = "database_unavailable"
    status = 503


class StagingMisconfigured(StagingError):
    """A ``StagingApp`` setting of the server's configuration (``jupyter_server_config.py``, the command line)
    has a value it cannot use (``concurrent_items = 0``, ``streams_per_file = "four"``): the server runs, and
    every staging request answers this (HTTP 503, the message naming the setting) until the setting is fixed
    and the server restarted. ``jupyter staging doctor`` reports the setting and its rule."""

    code = "staging_misconfigured"
    status = 503


def chained_errno(exc: BaseException, numbers: frozenset[int]) -> int | None:
    """The first of ``numbers`` (errno values) that ``exc`` — or an exception it was raised from or while
    handling (``__cause__`` / ``__context__``) — carries as an :class:`OSError`, by its ``errno`` or, for
    libraries such as pyarrow that raise one without an ``errno``, by its text (``os.strerror``); else
    None."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError):
            if current.errno in numbers:
                return current.errno
            text = str(current)
            for number in sorted(numbers):
                if os.strerror(number) in text:
                    return number
        current = current.__cause__ or current.__context__
    return None


def full_disk_errno(exc: BaseException) -> int | None:
    """``ENOSPC`` or ``EDQUOT`` when ``exc`` or its chain says the file system or the disk quota is full
    (:func:`chained_errno`); else None."""
    return chained_errno(exc, NO_SPACE_ERRNOS)


def not_writable_error(exc: BaseException) -> DestinationNotWritable | None:
    """The :class:`DestinationNotWritable` standing for ``exc`` when it or its chain is ``EROFS`` (a write
    to a read-only file system: :func:`chained_errno`), else None. The message names no path."""
    if chained_errno(exc, READ_ONLY_ERRNOS) is None:
        return None
    return DestinationNotWritable(
        "the destination is on a read-only file system; nothing was written there: choose a destination "
        "that can be written to"
    )


def no_space_error(exc: BaseException) -> NoSpace | None:
    """The :class:`NoSpace` standing for ``exc`` when it means a full disk (see :func:`full_disk_errno`),
    else None. The message gives the cause, never a path (it may name a scratch folder)."""
    number = full_disk_errno(exc)
    if number is None:
        return None
    cause = "disk quota exceeded" if number == errno.EDQUOT else "no space left on the device"
    return NoSpace(f"the file system being written is full ({cause}); free some space and try again")


def too_many_open_files_error(exc: BaseException, what: str = "") -> TransferFailed | None:
    """The ``too_many_open_files`` error (503: this server's state, not the source's nor the request's)
    standing for ``exc`` when it is an :class:`OSError` with ``EMFILE`` / ``ENFILE`` (no file descriptor
    left), else None. ``what`` (a file's name, say) starts the message; the message names the limit to raise
    (``RLIMIT_NOFILE``), never a path."""
    if not isinstance(exc, OSError) or exc.errno not in NO_DESCRIPTOR_ERRNOS:
        return None
    prefix = f"{what}: not read: " if what else ""
    return TransferFailed(
        f"{prefix}this server has too many files open ({os.strerror(exc.errno)}); run fewer jobs at once or "
        "raise its open-file limit (RLIMIT_NOFILE)",
        code="too_many_open_files",
        status=503,
    )


def as_staging_error(exc: BaseException) -> StagingError | None:
    """``exc`` itself when it is a :class:`StagingError`, a :class:`NoSpace` for a full file system, a
    :class:`DestinationNotWritable` for a read-only one, the ``too_many_open_files`` error for no descriptor
    left (see :func:`too_many_open_files_error`: creating a part file, opening a folder), else None (an
    unexpected error: the caller reports ``internal_error``)."""
    if isinstance(exc, StagingError):
        return exc
    return no_space_error(exc) or not_writable_error(exc) or too_many_open_files_error(exc)


class JobInterrupted(Exception):  # noqa: N818 - control flow, not an error a user sees
    """Raised inside a worker when the job was asked to pause or cancel; ``reason`` says which."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
