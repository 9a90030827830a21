"""The hub service's record of operations: one row per staging call, whatever its outcome.

SQLAlchemy 2 over SQLite by default; any SQLAlchemy URL works (``postgresql+psycopg://...``,
``mysql+pymysql://...``). The table is created when missing. Like :mod:`jupyter_staging.engine.store`, the
store is synchronous and thread-safe (each method opens its own session): callers on the event loop use
``asyncio.to_thread``.

No column ever holds a token or a secret: sources and targets are paths, ``error_reason`` is the message
shown to the user.

Several service replicas may share one database. A ``running`` operation is leased: ``runner`` names the
replica running it and ``lease_expires_at`` says until when; the runner renews the lease while it works
(:meth:`OperationStore.renew`). Another replica takes over only an operation whose lease expired, claiming
it atomically (:meth:`OperationStore.claim_expired`: ``SELECT ... FOR UPDATE SKIP LOCKED`` where the
database has it, and always a conditional ``UPDATE`` whose row count says who won), and a replica writes
the end of an operation only while it still holds it (:meth:`OperationStore.finish` raises
:class:`LeaseLost` otherwise). Lease times come from each replica's clock (UTC): keep them in sync (NTP).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Collection
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import BigInteger, String, Text, or_, select, update
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from jupyter_staging.engine.database import SQLStore
from jupyter_staging.engine.migrate import Migrations
from jupyter_staging.engine.store import UTCDateTime, aware, utcnow
from jupyter_staging.errors import InvalidRequest

#: The operations database's revisions (``jupyter_staging/hub/migrations``) and version table.
HUB_MIGRATIONS = Migrations(
    Path(__file__).with_name("migrations"), "staging_hub_alembic_version", "hub service's operations database"
)

#: Values of :attr:`Operation.status`.
STATUSES = ("running", "succeeded", "skipped", "failed")


class Base(DeclarativeBase):
    pass


class LeaseLost(Exception):
    """Raised when a replica records the end of an operation it no longer holds (another replica took
    it over after its lease expired, or it already ended). ``operation`` is the row as stored."""

    def __init__(self, operation: Operation) -> None:
        super().__init__(f"operation {operation.id} is held by {operation.runner!r} ({operation.status})")
        self.operation = operation


class Operation(Base):
    """One call of ``POST api/stage``.

    ``user`` is the user whose area the operation is for; ``actor`` the authenticated user or service
    who asked (they differ when an admin acts with ``?username=``). ``status`` is ``running``,
    ``succeeded``, ``skipped`` (a duplicate: ``error_code`` is ``duplicate``) or ``failed`` (refused or
    broken: ``error_code`` and ``error_reason`` say why). ``bytes`` is the file size in bytes,
    ``sha256`` the hex digest of the bytes written (null for links, whose content is the source itself),
    ``job_id`` the id of the staging job in the user's server for ``jupyter_copy``. ``started`` and
    ``finished`` are UTC. ``runner`` is the replica id of the service process that runs (or ran) it,
    ``lease_expires_at`` (UTC) when its hold on a ``running`` operation ends unless renewed; both are
    internal and not part of :meth:`to_dict`. Every time is read back as an aware UTC datetime
    (:class:`~jupyter_staging.engine.store.UTCDateTime`), as it loads.
    """

    __tablename__ = "operations"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    user: Mapped[str] = mapped_column(String(255), index=True)
    actor: Mapped[str] = mapped_column(String(255))
    method: Mapped[str] = mapped_column(String(32), index=True)
    source: Mapped[str] = mapped_column(Text, default="")
    target: Mapped[str | None] = mapped_column(Text, nullable=True)
    status: Mapped[str] = mapped_column(String(16), index=True)
    error_code: Mapped[str | None] = mapped_column(String(64), nullable=True)
    error_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    job_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    started: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    finished: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    runner: Mapped[str | None] = mapped_column(String(128), nullable=True)
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)

    def to_dict(self) -> dict[str, Any]:
        """The operation as the REST API returns it (times as ISO 8601 UTC, ``Z`` suffix)."""
        return {
            "id": self.id,
            "user": self.user,
            "actor": self.actor,
            "method": self.method,
            "source": self.source,
            "target": self.target,
            "status": self.status,
            "duplicate": self.status == "skipped" and self.error_code == "duplicate",
            "error_code": self.error_code,
            "error_reason": self.error_reason,
            "bytes": self.bytes,
            "sha256": self.sha256,
            "job_id": self.job_id,
            "started": _iso(self.started),
            "finished": _iso(self.finished),
        }


def _iso(value: datetime | None) -> str | None:
    value = aware(value)
    return value.astimezone(timezone.utc).isoformat().replace("+00:00", "Z") if value else None


class OperationStore(SQLStore):
    """Thread-safe access to the ``operations`` table at ``db_url`` (any SQLAlchemy URL)."""

    def __init__(self, db_url: str) -> None:
        super().__init__(db_url, Base, HUB_MIGRATIONS)

    def add(self, operation: Operation) -> Operation:
        """Insert ``operation`` (``started`` defaults to now)."""
        if operation.started is None:
            operation.started = utcnow()
        if operation.status is None:
            operation.status = "running"
        with self.session() as s:
            s.add(operation)
        return operation

    def update(self, operation_id: str, **fields: Any) -> Operation | None:
        """Set ``fields`` on an operation; returns it, or None when the id is unknown."""
        with self.session() as s:
            op = s.get(Operation, operation_id)
            if op is None:
                return None
            for key, value in fields.items():
                setattr(op, key, value)
        return op

    def finish(
        self, operation_id: str, status: str, *, runner: str | None = None, **fields: Any
    ) -> Operation | None:
        """Give an operation its final ``status`` (and other ``fields``), stamping ``finished`` and ending
        its lease. Returns it, or None when the id is unknown.

        With ``runner`` (a replica id), only while that replica holds the ``running`` operation: raises
        :class:`LeaseLost` when another replica took it over or it already ended. Raises
        :class:`ValueError` for a status that is not final."""
        if status not in STATUSES or status == "running":
            raise ValueError(f"not a final status: {status!r}")
        with self.session() as s:
            op = s.get(Operation, operation_id, with_for_update=runner is not None)
            if op is None:
                return None
            if runner is not None and (op.runner != runner or op.status != "running"):
                s.expunge(op)  # the row as read: the rollback this raise causes would expire it
                raise LeaseLost(op)
            for key, value in {
                **fields,
                "status": status,
                "finished": utcnow(),
                "lease_expires_at": None,
            }.items():
                setattr(op, key, value)
        return op

    def renew(self, operation_ids: Collection[str], runner: str, until: datetime) -> set[str]:
        """Extend to ``until`` the leases ``runner`` holds on the ``running`` operations among
        ``operation_ids``; returns the ids it still holds (the others were taken over or ended)."""
        if not operation_ids:
            return set()
        held = (
            Operation.id.in_(list(operation_ids)),
            Operation.runner == runner,
            Operation.status == "running",
        )
        with self.session() as s:
            s.execute(update(Operation).where(*held).values(lease_expires_at=until))
            return set(s.scalars(select(Operation.id).where(*held)))

    def claim_expired(
        self, runner: str, until: datetime, *, limit: int, now: datetime | None = None
    ) -> list[Operation]:
        """Take over at most ``limit`` ``running`` operations whose lease expired before ``now`` (or that
        have none: rows of a release before leases), oldest first: each gets ``runner`` and a lease until
        ``until``. Two replicas claiming at once never get the same row: candidates are read with
        ``FOR UPDATE SKIP LOCKED`` (PostgreSQL, MySQL 8, MariaDB 10.6; ignored by SQLite, whose writes are
        serialised), and each is taken by an ``UPDATE`` repeating the expiry test, kept only when it
        changed one row. Returns the claimed operations, their previous ``runner`` in ``op.runner``
        replaced by ``runner``."""
        now = now or utcnow()
        expired = (
            Operation.status == "running",
            or_(Operation.lease_expires_at.is_(None), Operation.lease_expires_at < now),
        )
        query = select(Operation).where(*expired).order_by(Operation.started, Operation.id).limit(limit)
        claimed = []
        with self.session() as s:
            for op in s.scalars(query.with_for_update(skip_locked=True)).all():
                taken = s.execute(
                    update(Operation)
                    .where(Operation.id == op.id, *expired)
                    .values(runner=runner, lease_expires_at=until)
                    .execution_options(synchronize_session=False)
                )
                if taken.rowcount == 1:  # type: ignore[attr-defined]
                    claimed.append(op)
            for op in claimed:
                s.refresh(op)
        return claimed

    def get(self, operation_id: str) -> Operation | None:
        """Operation ``operation_id``, or None; a read beside the writers (:meth:`read_session`). An id
        holding NUL names none (PostgreSQL would refuse the query)."""
        if "\x00" in operation_id:
            return None
        with self.read_session() as s:
            return s.get(Operation, operation_id)

    def list_operations(
        self,
        *,
        user: str | None = None,
        method: str | None = None,
        status: str | None = None,
        limit: int = 100,
        before: tuple[datetime, str] | None = None,
    ) -> list[Operation]:
        """Operations newest first (``started``, then ``id``, descending), filtered by the given columns, at
        most ``limit`` rows; with ``before`` (a :func:`parse_cursor` position: ``(started, id)`` of the last
        row of the page before) only those after it in that order. A read beside the writers
        (:meth:`read_session`), never queued behind running operations' updates. A filter holding NUL
        matches nothing (no recorded text holds one; PostgreSQL would refuse the query).

        A page is read from an index at its position, whatever the number of operations before it
        (``started <= s AND (started < s OR id < i)``, a range of the index on every database): a user's
        through ``(user, started, id)`` (hub0004), which MariaDB is made to read as a range from the position
        (:data:`USER_PAGE_HINT`); everyone's through the index on ``started``, in which rows of one
        ``started`` are put in ``id`` order by the database as it reads them (InnoDB's index holds the id;
        PostgreSQL and SQLite sort each such group alone: their sort stops with the page)."""
        if any("\x00" in value for value in (user, method, status) if value is not None):
            return []
        query = select(Operation)
        if user is not None:
            query = query.where(Operation.user == user)
        if method is not None:
            query = query.where(Operation.method == method)
        if status is not None:
            query = query.where(Operation.status == status)
        if before is not None:
            started, operation_id = before
            query = query.where(
                Operation.started <= started, or_(Operation.started < started, Operation.id < operation_id)
            )
            if user is not None:
                for dialect in ("mysql", "mariadb"):
                    query = query.with_hint(Operation, USER_PAGE_HINT, dialect_name=dialect)
        query = query.order_by(Operation.started.desc(), Operation.id.desc()).limit(limit)
        with self.read_session() as s:
            return list(s.scalars(query))


#: MySQL / MariaDB: a user's page after a position is read from the position on in the
#: ``(user, started, id)`` index. Left to itself, MariaDB 10.11 looked the user up in it and read backwards
#: from the user's newest operation to the position (25,101 rows for the page of 100 in the middle of
#: 50,000 of one user, 50,000 for the last; 101 and 50 with it).
USER_PAGE_HINT = "FORCE INDEX (ix_operations_user_started)"

#: Characters of a cursor :func:`parse_cursor` reads (one :func:`page_cursor` makes is under 100).
MAX_CURSOR_CHARS = 200


def page_cursor(operation: Operation) -> str:
    """The opaque cursor of the position after ``operation`` in :meth:`OperationStore.list_operations`'s
    order: URL-safe base64 (no padding) of the JSON ``[started (ISO 8601 UTC, microseconds), id]``."""
    started = (
        (aware(operation.started) or utcnow()).astimezone(timezone.utc).isoformat(timespec="microseconds")
    )
    raw = json.dumps([started, operation.id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def parse_cursor(cursor: str) -> tuple[datetime, str]:
    """The position ``(started, id)`` a :func:`page_cursor` cursor holds (``started`` aware UTC).

    Raises :class:`~jupyter_staging.errors.InvalidRequest` (400, code ``invalid_cursor``) for anything else:
    too long, not base64, not the JSON pair, a time without its zone or out of range in UTC, an id that is
    not 1 to 36 printable characters."""
    try:
        if len(cursor) > MAX_CURSOR_CHARS:
            raise ValueError("too long")
        started, operation_id = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        when = datetime.fromisoformat(started)
        if when.tzinfo is None or not isinstance(operation_id, str):
            raise ValueError("no time zone")
        if not 0 < len(operation_id) <= 36 or not operation_id.isprintable():
            raise ValueError("not an operation id")
        return when.astimezone(timezone.utc), operation_id
    except (ValueError, TypeError, OverflowError, binascii.Error):  # JSON's, Unicode's errors: ValueError
        raise InvalidRequest(
            "before is not a cursor of this service: pass the next_cursor of an answer as it is",
            code="invalid_cursor",
        ) from None
