"""The job database's tables as SQLAlchemy 2 ORM models: jobs, their resume data, chunks and log events.

:class:`~jupyter_staging.engine.store.Store` reads and writes them; Alembic revisions
(``engine/migrations/jobs``) bring an existing database to them. Times are stored as UTC and read back
aware (:class:`UTCDateTime`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, NamedTuple, cast

from sqlalchemy import JSON, BigInteger, DateTime, ForeignKey, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

#: Keys of ``JobRecord.resume``: the bytes of each Parquet part written so far; why an output was staged
#: as it is although a conversion was asked for.
PART_BYTES, NOT_CONVERTED, BYTES_COLUMNS = "part_bytes", "not_converted", "bytes_columns"


def aware(value: datetime | None) -> datetime | None:
    """SQLite and MySQL return naive datetimes; every time stored here is UTC."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value


class UTCDateTime(TypeDecorator[datetime]):
    """``DateTime(timezone=True)`` read back as an aware UTC datetime (SQLite and MySQL return naive
    values). Converting on load, not on the loaded record, keeps a read from marking the record changed
    (and the session from writing every row it read back to the database)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        return aware(value)


class Base(DeclarativeBase):
    pass


class JobRecord(Base):
    """One staging job (see ``models.DescribeJob`` for the meaning of each column)."""

    __tablename__ = "staging_jobs"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    owner: Mapped[str] = mapped_column(String(255), index=True)
    #: The root folder destinations are relative to; a database may serve several servers.
    root: Mapped[str] = mapped_column(Text, default="")
    name: Mapped[str] = mapped_column(String(255))
    #: The source as shown: secrets redacted (``manifest:<n> entries`` for a manifest job).
    source: Mapped[str] = mapped_column(Text)
    #: Manifest jobs: entry name -> source, redacted, in the request's order; None otherwise.
    entries: Mapped[dict[str, str] | None] = mapped_column(JSON, nullable=True)
    #: The raw source / entries when they hold secrets (presigned URLs), sealed with the manager's
    #: :class:`~jupyter_staging.safety.sealed.SecretBox`; None when nothing is secret or once the job
    #: has ended.
    sealed: Mapped[str | None] = mapped_column(Text, nullable=True)
    destination: Mapped[str] = mapped_column(Text)
    method: Mapped[str] = mapped_column(String(32))
    convert: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    state: Mapped[str] = mapped_column(String(16), index=True)
    #: Desired state requested by a user while the worker still runs ("paused", "cancelled"), else None.
    requested: Mapped[str | None] = mapped_column(String(16), nullable=True)
    #: ``host:pid:start`` of the process that runs (or queued) the job; recovery skips jobs of live runners.
    runner: Mapped[str | None] = mapped_column(String(255), nullable=True)
    #: Until when that runner holds the job unless it renews its lease (UTC, migration 0008): set with
    #: ``runner``, renewed by the runner's heartbeat; a server of another host takes the job over only once it
    #: has passed (:mod:`~jupyter_staging.engine.leases`). None in rows of a release before leases.
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    bytes_done: Mapped[int] = mapped_column(BigInteger, default=0)
    bytes_total: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    chunks_done: Mapped[int] = mapped_column(Integer, default=0)
    chunks_total: Mapped[int | None] = mapped_column(Integer, nullable=True)
    rows_done: Mapped[int] = mapped_column(BigInteger, default=0)
    error_code: Mapped[str | None] = mapped_column(String(64), nullable=True)
    error_message: Mapped[str | None] = mapped_column(Text, nullable=True)
    cleanup_policy: Mapped[str] = mapped_column(String(32), default="retain")
    idempotency_key: Mapped[str | None] = mapped_column(String(255), nullable=True, index=True)
    ttl_seconds: Mapped[int | None] = mapped_column(Integer, nullable=True)
    #: What showing a job needs of the resume data, written beside it whenever it is written (migration
    #: 0003): ``{part path: bytes}`` of a conversion's Parquet parts, and ``{output name: reason}`` of
    #: files staged as they are although a conversion was asked for.
    part_bytes: Mapped[dict[str, int] | None] = mapped_column(JSON, nullable=True)
    not_converted: Mapped[dict[str, str] | None] = mapped_column(JSON, nullable=True)
    #: ``{output name: [column names]}`` of the converted tables with columns read as bytes, not text (a
    #: CSV that is not UTF-8 and no ``encoding`` given), shown as a notice (migration 0005).
    bytes_columns: Mapped[dict[str, list[str]] | None] = mapped_column(JSON, nullable=True)
    #: The sum of ``part_bytes`` (``progress.output_bytes``), kept by a running job with each write of
    #: changes (migration 0006): ``part_bytes`` itself is written with changes only while small. None for
    #: jobs written before; their ``part_bytes`` is summed instead.
    output_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)

    @property
    def resume(self) -> dict[str, Any] | None:
        """Engine bookkeeping needed to resume (validators such as ETag / mtime per file), JSON, kept in a
        table of its own (:class:`ResumeRecord`). It lists every item of the job (megabytes for 20,000
        files), so it is read only when asked for (``resume=True`` of :meth:`Store.get_job` /
        :meth:`Store.list_jobs`, ``load_resume`` of :meth:`Store.update_job`). Raises
        :class:`ResumeNotRead` on a record read without it."""
        try:
            return cast("dict[str, Any] | None", self.__dict__[_RESUME_KEY])
        except KeyError:
            raise ResumeNotRead(f"job {self.id}: its resume data was not read with it") from None

    @resume.setter
    def resume(self, value: dict[str, Any] | None) -> None:
        self.__dict__[_RESUME_KEY] = value

    def has_resume(self) -> bool:
        """True when :attr:`resume` was read (or set) on this record."""
        return _RESUME_KEY in self.__dict__


#: Where a :class:`JobRecord` holds its resume data once read (not a mapped attribute).
_RESUME_KEY = "_resume_data"


class ResumeNotRead(RuntimeError):
    """:attr:`JobRecord.resume` of a record read without its resume data."""


class ResumeRecord(Base):
    """A job's resume data (:attr:`JobRecord.resume`), one row per job, in a table of its own (migration
    0004): in the job's row, megabytes of JSON made every progress update rewrite them (SQLite rewrites a
    whole row: 11 ms per update of a 20,000-file job) and every read of a later column walk them."""

    __tablename__ = "staging_job_resume"

    job_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("staging_jobs.id", ondelete="CASCADE"), primary_key=True
    )
    resume: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True), nullable=True)


class ResumeChangeRecord(Base):
    """Changes to a job's resume data written since its last whole write (migration 0006), one row per
    write, applied in ``id`` order on top of :class:`ResumeRecord` when the resume data is read
    (:func:`~jupyter_staging.engine.resumechanges.apply_changes`). A conversion of thousands of small
    tables records a few entries per table (its folder, version, parts); rewriting the whole resume data,
    which lists every item, for each of them made the job quadratic (1,000 five-row CSV tables: 75 s).
    A whole write removes the rows it includes."""

    __tablename__ = "staging_resume_changes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("staging_jobs.id", ondelete="CASCADE"), index=True
    )
    #: ``[[op, key, ...], ...]`` (:mod:`~jupyter_staging.engine.resumechanges`).
    changes: Mapped[list[Any]] = mapped_column(JSON)


def _show_resume(rec: JobRecord) -> None:
    """Set the shown parts of ``rec``'s resume data (``part_bytes``, ``not_converted``,
    ``bytes_columns``) from it."""
    for name, value in shown_parts(rec.resume).items():
        setattr(rec, name, value)


#: Parts up to which ``part_bytes`` is written beside the resume data too; beyond, only their sum
#: (``output_bytes``): the job's row is read with every part a conversion records, and 20,000 parts' sizes
#: there made each read O(parts).
SHOWN_PART_BYTES = 256


def shown_parts(resume: dict[str, Any] | None) -> dict[str, Any]:
    """``{"part_bytes": ..., "not_converted": ..., "bytes_columns": ..., "output_bytes": ...}`` of
    ``resume`` (None when absent): the columns written beside the resume data (``part_bytes`` only while it
    holds at most :data:`SHOWN_PART_BYTES` parts)."""
    resume = resume or {}
    part_bytes = resume.get(PART_BYTES) or None
    return {
        "part_bytes": part_bytes if part_bytes and len(part_bytes) <= SHOWN_PART_BYTES else None,
        "not_converted": resume.get(NOT_CONVERTED) or None,
        "bytes_columns": resume.get(BYTES_COLUMNS) or None,
        "output_bytes": sum(int(n) for n in part_bytes.values()) if part_bytes else None,
    }


class ChunkRecord(Base):
    """One output chunk of a job: a file (relative to the job's destination) or an object URI."""

    __tablename__ = "staging_chunks"

    id: Mapped[str] = mapped_column(String(48), primary_key=True)
    job_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("staging_jobs.id", ondelete="CASCADE"), index=True
    )
    index: Mapped[int] = mapped_column(Integer)
    path: Mapped[str] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(16))
    rows: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    content_type: Mapped[str | None] = mapped_column(String(128), nullable=True)
    #: Manifest jobs: the entry this chunk belongs to.
    entry: Mapped[str | None] = mapped_column(String(128), nullable=True)
    #: Why the chunk's entry failed (the chunk stays pending), else None.
    error_code: Mapped[str | None] = mapped_column(String(64), nullable=True)
    error_message: Mapped[str | None] = mapped_column(Text, nullable=True)
    #: The modification time (ns since the epoch) of the chunk's local file when the job published it
    #: (migration 0007): a file whose time is another now was edited since, and a re-run or a cleanup keeps
    #: it. None for a link whose bytes were not read, an object in a store, and chunks recorded before.
    mtime_ns: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


@dataclass(slots=True)
class ChunkRow:
    """A chunk of a running job as the engine holds it: the columns of :class:`ChunkRecord`, in no session
    and never flushed through the ORM (the engine's chunk ledger writes its rows itself). One object for
    the collector to walk, where an ORM instance is six (its ``__dict__``, its ``InstanceState`` and that
    state's weak reference, set and callbacks): a job of 20,000 files held 120,000 more objects, and the
    collector's full passes over the grown heap took about a fifth of a hard-link job run again."""

    id: str
    job_id: str
    index: int
    path: str
    state: str
    rows: int | None = None
    bytes: int | None = None
    sha256: str | None = None
    content_type: str | None = None
    entry: str | None = None
    error_code: str | None = None
    error_message: str | None = None
    mtime_ns: int | None = None


#: A chunk as a job's run sees it: read from the database at its start (recovery), or made during it.
JobChunk = ChunkRecord | ChunkRow


class ChunkSummary(NamedTuple):
    """The columns of a chunk record a manifest and the job's totals need (see :class:`ChunkRecord`)."""

    path: str
    state: str
    rows: int | None
    bytes: int | None
    sha256: str | None
    content_type: str | None
    entry: str | None
    mtime_ns: int | None


class EventRecord(Base):
    """A line of a job's log: state changes, warnings, errors (never secrets)."""

    __tablename__ = "staging_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("staging_jobs.id", ondelete="CASCADE"), index=True
    )
    time: Mapped[datetime] = mapped_column(UTCDateTime())
    level: Mapped[str] = mapped_column(String(16))
    message: Mapped[str] = mapped_column(Text)
