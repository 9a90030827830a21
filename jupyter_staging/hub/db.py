"""The hub service's record of operations: one row per staging call, whatever its outcome.

SQLAlchemy 2 over SQLite by default; any SQLAlchemy URL works (``postgresql+psycopg://...``,
``mysql+pymysql://...``). The table is created when missing. Like :mod:`jupyter_staging.engine.store`, the
store is synchronous and thread-safe (each method opens its own session): callers on the event loop use
``asyncio.to_thread``.

No column ever holds a token or a secret: sources and targets are paths, ``error_reason`` is the message
shown to the user.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import BigInteger, DateTime, String, Text, select
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from jupyter_staging.engine.migrate import Migrations
from jupyter_staging.engine.store import SQLStore, aware, utcnow

#: The operations database's revisions (``jupyter_staging/hub/migrations``) and version table.
HUB_MIGRATIONS = Migrations(Path(__file__).with_name("migrations"), "staging_hub_alembic_version")

#: Values of :attr:`Operation.status`.
STATUSES = ("running", "succeeded", "skipped", "failed")


class Base(DeclarativeBase):
    pass


class Operation(Base):
    """One call of ``POST api/stage``.

    ``user`` is the user whose area the operation is for; ``actor`` the authenticated user or service
    who asked (they differ when an admin acts with ``?username=``). ``status`` is ``running``,
    ``succeeded``, ``skipped`` (a duplicate: ``error_code`` is ``duplicate``) or ``failed`` (refused or
    broken: ``error_code`` and ``error_reason`` say why). ``bytes`` is the file size in bytes,
    ``sha256`` the hex digest of the bytes written (null for links, whose content is the source itself),
    ``job_id`` the id of the staging job in the user's server for ``jupyter_copy``. ``started`` and
    ``finished`` are UTC.
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
    started: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    finished: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)

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
        self._fix(operation)
        return operation

    def update(self, operation_id: str, **fields: Any) -> Operation | None:
        """Set ``fields`` on an operation; returns it, or None when the id is unknown."""
        with self.session() as s:
            op = s.get(Operation, operation_id)
            if op is None:
                return None
            for key, value in fields.items():
                setattr(op, key, value)
        return self._fix(op)

    def finish(self, operation_id: str, status: str, **fields: Any) -> Operation | None:
        """Give an operation its final ``status`` (and other ``fields``), stamping ``finished``."""
        if status not in STATUSES or status == "running":
            raise ValueError(f"not a final status: {status!r}")
        return self.update(operation_id, status=status, finished=utcnow(), **fields)

    def get(self, operation_id: str) -> Operation | None:
        with self.session() as s:
            return self._fix(s.get(Operation, operation_id))

    def list_operations(
        self,
        *,
        user: str | None = None,
        method: str | None = None,
        status: str | None = None,
        limit: int = 100,
    ) -> list[Operation]:
        """Operations newest first, filtered by the given columns, at most ``limit`` rows."""
        query = select(Operation)
        if user is not None:
            query = query.where(Operation.user == user)
        if method is not None:
            query = query.where(Operation.method == method)
        if status is not None:
            query = query.where(Operation.status == status)
        query = query.order_by(Operation.started.desc(), Operation.id.desc()).limit(limit)
        with self.session() as s:
            return [self._fix(op) for op in s.scalars(query)]  # type: ignore[misc]

    @staticmethod
    def _fix(op: Operation | None) -> Operation | None:
        if op is not None:
            op.started = aware(op.started)  # type: ignore[assignment]
            op.finished = aware(op.finished)
        return op
