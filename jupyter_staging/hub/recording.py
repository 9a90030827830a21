"""How the hub service records an operation: one database row and one line of the operations log.

Every call of ``POST api/stage`` ends in :meth:`Recorder.finish` or :meth:`Recorder.fail`, whatever
happened; a failure is recorded even when the database is down (the log line still says it). The end of
a leased operation (``op.runner`` set) is written only by the replica holding it: a replica whose lease
was taken over drops its outcome (and logs why), so each operation ends exactly once.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import secrets
import socket
from datetime import datetime, timedelta
from typing import Any

from jupyter_staging.engine.database import DATABASE_DOWN
from jupyter_staging.errors import (
    InvalidRequest,
    StagingError,
    no_space_error,
    not_writable_error,
    too_many_open_files_error,
)
from jupyter_staging.hub.db import LeaseLost, Operation, OperationStore, utcnow
from jupyter_staging.hub.fileops import Outcome
from jupyter_staging.safety.paths import escape_non_utf8
from jupyter_staging.server.web import database_down

logger = logging.getLogger(__name__)

#: Characters of an error code the operations table keeps (its ``error_code`` column).
ERROR_CODE_CHARS = 64


def new_replica_id() -> str:
    """A replica id unique to this process: ``<host>:<pid>:<8 random hex digits>`` (at most 128 chars)."""
    return f"{socket.gethostname()[:100]}:{os.getpid()}:{secrets.token_hex(4)}"


class Leases:
    """The operations this replica (``replica_id``) holds, each leased for ``lease_seconds`` (seconds)
    at a time in ``store``; :meth:`renew` extends them (the heartbeat)."""

    def __init__(self, store: OperationStore, replica_id: str, lease_seconds: float) -> None:
        self.store = store
        self.replica_id = replica_id
        self.lease_seconds = lease_seconds
        #: Ids of the running operations this replica holds.
        self.held: set[str] = set()

    def until(self) -> datetime:
        """When a lease taken or renewed now expires (aware UTC datetime)."""
        return utcnow() + timedelta(seconds=self.lease_seconds)

    def hold(self, op: Operation) -> None:
        """Mark ``op`` as run by this replica, its lease starting now (before its row is written)."""
        op.runner = self.replica_id
        op.lease_expires_at = self.until()
        self.held.add(op.id)

    async def renew(self) -> set[str]:
        """Extend the leases of the held operations; returns the ids lost to another replica (they are
        no longer held: their outcome will be dropped)."""
        held = set(self.held)
        kept = await asyncio.to_thread(self.store.renew, held, self.replica_id, self.until())
        lost = held & self.held - kept  # those that ended meanwhile left self.held
        self.held -= lost
        for operation_id in sorted(lost):
            logger.warning("operation %s: lease lost by replica %s", operation_id, self.replica_id)
        return lost


class Recorder:
    """Final states of operations in ``store`` (an :class:`~jupyter_staging.hub.db.OperationStore`), each
    with a line in ``oplog`` (the operations log, see :mod:`jupyter_staging.hub.oplog`); ``leases`` are
    this replica's (default: a new replica id, 60 s leases)."""

    def __init__(self, store: OperationStore, oplog: logging.Logger, leases: Leases | None = None) -> None:
        self.store = store
        self.oplog = oplog
        self.leases = leases or Leases(store, new_replica_id(), 60.0)

    async def begin(self, op: Operation) -> Operation:
        """Insert ``op`` as ``running``, held by this replica."""
        op.status = "running"
        self.leases.hold(op)
        _escape_text(op)
        return await asyncio.to_thread(self.store.add, op)

    async def finish(self, op: Operation, outcome: Outcome) -> Operation:
        """Record ``op`` as ``succeeded`` or ``skipped`` with the outcome's size and digest."""
        fields: dict[str, Any] = {
            "bytes": outcome.bytes, "sha256": outcome.sha256, "target": op.target, "job_id": op.job_id,
        }  # fmt: skip
        if outcome.duplicate:
            fields.update(
                error_code="duplicate",
                error_reason="the same file (same size and sha256, or same link) is already there; skipped",
            )
        try:
            done = await asyncio.to_thread(self.save, op, outcome.status, fields)
        except LeaseLost as lost:
            return self._dropped(op, lost)
        self.log(logging.INFO, done, "duplicate, skipped" if outcome.duplicate else "done")
        return done

    def save(self, op: Operation, status: str, fields: dict[str, Any]) -> Operation:
        """Give ``op`` its final ``status`` and ``fields``, inserting the row if it is not there yet.

        Raises :class:`~jupyter_staging.hub.db.LeaseLost` when ``op.runner`` no longer holds the row."""
        _escape_text(op)
        fields = {k: storable(v) if isinstance(v, str) else v for k, v in fields.items()}
        if fields.get("error_code"):  # a code a user's server answered may be of any length
            fields["error_code"] = fields["error_code"][:ERROR_CODE_CHARS]
        try:
            done = self.store.finish(op.id, status, runner=op.runner, **fields)
        finally:
            self.leases.held.discard(op.id)
        if done is None:
            op.status = status
            op.finished = utcnow()
            op.lease_expires_at = None
            for key, value in fields.items():
                setattr(op, key, value)
            done = self.store.add(op)
        return done

    async def fail(self, op: Operation, err: BaseException, **fields: Any) -> None:
        """Record ``op`` as failed because of ``err`` (a refusal, an I/O error or a bug)."""
        staging = as_staging_error(err, op.id)
        level = logging.WARNING if staging.status < 500 else logging.ERROR
        if not isinstance(err, (StagingError, OSError)):
            logger.error("operation %s: unexpected %s: %s", op.id, type(err).__name__, err)
        fields.update(
            error_code=staging.code, error_reason=staging.message, target=op.target, job_id=op.job_id
        )
        try:
            done = await asyncio.to_thread(self.save, op, "failed", fields)
        except LeaseLost as lost:
            self._dropped(op, lost)
            return
        except Exception as db_err:  # the database is down: the log line still records the call
            logger.error("operation %s not recorded: %s: %s", op.id, type(db_err).__name__, db_err)
            op.status, op.error_code = "failed", staging.code
            done = op
        self.log(level, done, escape_non_utf8(staging.message))

    def _dropped(self, op: Operation, lost: LeaseLost) -> Operation:
        """The row as another replica left it, when this one lost ``op`` (its outcome is not recorded)."""
        logger.warning(
            "operation %s: this replica (%s) lost its lease to %s; its outcome is dropped",
            op.id, op.runner, lost.operation.runner,
        )  # fmt: skip
        return lost.operation

    def log(self, level: int, op: Operation, message: str) -> None:
        """One line of the operations log (a JSON object, see :mod:`jupyter_staging.hub.oplog`)."""
        self.oplog.log(
            level,
            message,
            extra={
                "operation": op.id,
                "user": op.user,
                "actor": op.actor,
                "method": op.method,
                "status": op.status,
                "code": op.error_code,
                "source": op.source,
                "target": op.target,
                "bytes": op.bytes,
                "job_id": op.job_id,
            },
        )


def storable(text: str) -> str:
    """``text`` as every database takes it: lone surrogates (a name that is not UTF-8) as ``\\udcXX``
    escapes (:func:`~jupyter_staging.safety.paths.escape_non_utf8`), NUL as the four characters ``\\x00``
    (PostgreSQL refuses NUL in text: a source path holding one, or a job's error message from a user's
    server, made the row's write fail, and a failure was then left ``running``)."""
    return escape_non_utf8(text).replace("\x00", "\\x00")


def _escape_text(op: Operation) -> None:
    """Make ``op``'s text :func:`storable`, so no database refuses the row."""
    for field in ("user", "actor", "source", "target"):
        value = getattr(op, field)
        if isinstance(value, str):
            setattr(op, field, storable(value))


def as_staging_error(err: BaseException, operation_id: str) -> StagingError:
    """``err`` as a :class:`StagingError` with ``operation_id`` attached; OS errors keep their
    ``strerror`` (never a traceback). No file descriptor left (``EMFILE`` / ``ENFILE``) is the engine's
    ``too_many_open_files`` (503: the service's state, not the request's); a full file system or disk quota
    (``ENOSPC`` / ``EDQUOT``) its ``no_space`` (507), as :func:`~jupyter_staging.errors.no_space_error`
    says it; a read-only one (``EROFS``) its ``destination_not_writable`` (409); an operations database that
    cannot be reached now ``database_unavailable`` (503)."""
    if isinstance(err, StagingError):
        staging = err
    elif (no_descriptor := too_many_open_files_error(err)) is not None:
        staging = no_descriptor
    elif isinstance(err, FileNotFoundError):
        staging = InvalidRequest(
            f"a folder of the target does not exist: {err.strerror}", code="target_missing"
        )
    elif (storage := no_space_error(err) or not_writable_error(err)) is not None:
        staging = storage
    elif isinstance(err, OSError) and err.errno == errno.ENAMETOOLONG:
        staging = InvalidRequest("a name in the path is too long", code="name_too_long")
    elif isinstance(err, OSError):
        staging = StagingError(f"file system error: {err.strerror or type(err).__name__}", code="io_error")
    elif isinstance(err, DATABASE_DOWN):  # the service's state, not the request's: 503, try again later
        staging = database_down("operations database", err)
    else:
        staging = StagingError(
            f"internal error ({type(err).__name__}); see the service log", code="internal_error"
        )
    staging.operation_id = operation_id  # type: ignore[attr-defined]
    return staging
