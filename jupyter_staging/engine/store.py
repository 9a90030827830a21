"""Persistence of jobs, chunks and job log events with SQLAlchemy 2.

SQLite by default (one file, WAL journal so readers never wait for the writer); any SQLAlchemy URL works
(PostgreSQL, MySQL/MariaDB). The store is synchronous and thread-safe: every method opens its own session,
so callers on an event loop must call it from a worker thread.
"""

from __future__ import annotations

import functools
import logging
import operator
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from typing import Any, cast

from sqlalchemy import (
    Table,
    bindparam,
    delete,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import (
    Session,
    make_transient_to_detached,
)
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.dml import Insert, Update
from sqlalchemy.sql.schema import ScalarElementColumnDefault

from jupyter_staging.engine.database import SQLStore
from jupyter_staging.engine.migrate import JOB_MIGRATIONS
from jupyter_staging.engine.resumerows import add_changes, add_resume, read_resume, write_resume
from jupyter_staging.engine.schema import (
    BYTES_COLUMNS,
    NOT_CONVERTED,
    PART_BYTES,
    Base,
    ChunkRecord,
    ChunkSummary,
    EventRecord,
    JobRecord,
    ResumeChangeRecord,
    ResumeNotRead,
    ResumeRecord,
    UTCDateTime,
    _show_resume,
    aware,
    shown_parts,
)
from jupyter_staging.errors import JobInterrupted

__all__ = [
    "BYTES_COLUMNS",
    "NOT_CONVERTED",
    "PART_BYTES",
    "ChunkRecord",
    "ChunkSummary",
    "EventRecord",
    "JobRecord",
    "ResumeNotRead",
    "ResumeRecord",
    "Store",
    "UTCDateTime",
    "aware",
    "shown_parts",
    "utcnow",
]

log = logging.getLogger(__name__)

#: Range of a SQL ``INTEGER`` (64-bit signed): larger numbers match no row (SQLite would overflow).
SQL_INT_MIN, SQL_INT_MAX = -(2**63), 2**63 - 1


def utcnow() -> datetime:
    """Now, as an aware UTC datetime (its own function so tests can move time)."""
    return datetime.now(timezone.utc)


#: "No resume data given" (None is resume data: none).
_UNSET: Any = object()


#: The job table's columns by attribute name (each attribute is named as its column).
_JOB_COLUMNS = tuple(attr.key for attr in JobRecord.__mapper__.column_attrs)
#: The job table's scalar column defaults (``bytes_done`` 0, ``cleanup_policy`` "retain"...).
_JOB_DEFAULTS = {
    column.key: cast(ScalarElementColumnDefault, column.default).arg
    for column in cast(Table, JobRecord.__table__).columns
    if column.default is not None and column.default.is_scalar
}
#: The job table itself: an ``UPDATE`` of it by Core, not through the ORM's bulk update, whose per-statement
#: work (its session synchronisation) was a fifth of a small table's conversion.
_JOBS = cast(Table, JobRecord.__table__)
_INSERT_JOB = insert(_JOBS)


#: The states a runner holds a job in (queued in its executor, or running).
_HELD = ("queued", "running")
_INSERT_EVENT = insert(cast(Table, EventRecord.__table__))
_ACTIVE_JOB_ID = (
    select(JobRecord.id)
    .where(
        JobRecord.root == bindparam("root"),
        JobRecord.destination == bindparam("destination"),
        JobRecord.state.in_(bindparam("states", expanding=True)),
    )
    .order_by(JobRecord.created_at.desc())
    .limit(1)
)


@functools.lru_cache(maxsize=64)
def _job_update(columns: tuple[str, ...], held: bool = False) -> Update:
    """``UPDATE staging_jobs`` of ``columns`` and ``updated_at`` for the row whose ``id`` is bound as
    ``job_id_`` (and, when ``held``, only while it is queued or running under the runner bound as
    ``runner_``): built once per list of columns (building and keying a statement per write was a third of
    a small write's time)."""
    values = {name: bindparam(name, type_=_JOBS.c[name].type) for name in (*columns, "updated_at")}
    query = update(_JOBS).where(_JOBS.c.id == bindparam("job_id_"))
    if held:
        query = query.where(_JOBS.c.runner == bindparam("runner_"), _JOBS.c.state.in_(_HELD))
    return query.values(values)


@functools.lru_cache(maxsize=64)
def _chunk_insert(columns: tuple[str, ...]) -> Insert:
    """``INSERT INTO staging_chunks`` of ``columns`` (bound by their names)."""
    table = cast(Table, ChunkRecord.__table__)
    return insert(table).values({name: bindparam(name) for name in columns})


@functools.lru_cache(maxsize=64)
def _chunk_update(columns: tuple[str, ...]) -> Update:
    """``UPDATE staging_chunks`` of ``columns`` for the row whose ``id`` is bound as ``chunk_id``."""
    table = cast(Table, ChunkRecord.__table__)
    return update(table).where(table.c.id == bindparam("chunk_id")).values({n: bindparam(n) for n in columns})


@functools.lru_cache(maxsize=256)
def _compiled(stmt: Insert | Update, dialect: Dialect) -> SQLCompiler:
    return cast(SQLCompiler, stmt.compile(dialect=dialect))


def _executemany(s: Session, stmt: Insert | Update, rows: list[dict[str, Any]]) -> None:
    """Run ``stmt`` once per row of ``rows`` (``{bind name: value}``) as one DBAPI ``executemany`` of the
    statement compiled for the session's database, the rows handed to the driver as they are (tuples in
    the statement's order for a positional paramstyle). The chunk table's columns are strings and integers,
    which no dialect converts; SQLAlchemy's own per-row parameter processing took two thirds of writing
    2,000 rows on SQLite (21-23 ms against 7.5-8 ms for the insert, 22 ms against 4.5-5 ms for the update)."""
    conn = s.connection()
    compiled = _compiled(stmt, conn.dialect)
    order = compiled.positiontup
    if not order:
        conn.exec_driver_sql(compiled.string, rows)
        return
    if len(order) == 1:
        conn.exec_driver_sql(compiled.string, [(row[order[0]],) for row in rows])
        return
    values = operator.itemgetter(*order)
    conn.exec_driver_sql(compiled.string, [values(row) for row in rows])


class Store(SQLStore):
    """Thread-safe access to the job tables (jobs, chunks, log events) at ``db_url``."""

    def __init__(self, db_url: str) -> None:
        super().__init__(db_url, Base, JOB_MIGRATIONS)

    # -- jobs ---------------------------------------------------------------------------------------

    def add_job(self, record: JobRecord, events: Sequence[tuple[str, str]] = ()) -> JobRecord:
        """Insert job ``record`` (a new, transient record) and its first log lines ``events`` (``(level,
        message)``, already redacted) in one transaction: a new job costs one commit. Returns ``record``,
        detached with every column loaded, as a record read back would be.

        Two Core ``INSERT`` statements, not the ORM's unit of work (about half the CPU of a request that
        creates a job): every column is taken from ``record`` as it is; one it leaves None is NULL."""
        if not record.has_resume():
            record.resume = None
        _show_resume(record)
        row = {name: getattr(record, name) for name in _JOB_COLUMNS}
        for name, value in row.items():
            default = _JOB_DEFAULTS.get(name)
            if value is None and default is not None:
                row[name] = default  # the column's own default, as the ORM would have applied it
        for name, value in row.items():
            setattr(record, name, value)  # every column loaded: nothing to expire on the detached record
        # A column left out is SQL NULL (or its default), as the ORM writes an attribute never set; a JSON
        # column given None would hold the JSON text 'null'.
        values = {name: value for name, value in row.items() if value is not None}
        with self.session(first=True) as s:
            s.execute(_INSERT_JOB, [values])
            if record.resume is not None:
                add_resume(s, record.id, record.resume)
            if events:
                now = utcnow()
                s.execute(
                    _INSERT_EVENT,
                    [{"job_id": record.id, "time": now, "level": lv, "message": m} for lv, m in events],
                )
        make_transient_to_detached(record)
        return record

    def get_job(self, job_id: str, *, resume: bool = True) -> JobRecord | None:
        """Job ``job_id`` or None; without ``resume`` its resume data is not read (enough to show it)."""
        with self.read_session() as s:
            rec = s.get(JobRecord, job_id)
            if rec is not None and resume:
                read_resume(s, [rec])
            return rec

    def job_state(self, job_id: str) -> tuple[str, str, str] | None:
        """``(state, root, owner)`` of job ``job_id``, or None: one narrow ``SELECT`` that never reads the
        resume data (which lists every item of the job, megabytes for a folder of 20,000 files)."""
        with self.read_session() as s:
            row = s.execute(
                select(JobRecord.state, JobRecord.root, JobRecord.owner).where(JobRecord.id == job_id)
            ).first()
            return None if row is None else (row.state, row.root, row.owner)

    def active_job_id(self, root: str, destination: str, states: list[str]) -> str | None:
        """The id of the newest job of ``root`` writing to ``destination`` in one of ``states``, or None:
        one narrow ``SELECT`` (no job's resume data read), built once (every ``POST /jobs`` asks)."""
        with self.read_session() as s:
            params = {"root": root, "destination": destination, "states": states}
            return s.execute(_ACTIVE_JOB_ID, params).scalars().first()

    def find_by_idempotency_key(self, owner: str, root: str, key: str) -> JobRecord | None:
        """The job of ``owner`` under server root ``root`` created with idempotency key ``key``, or None.
        A database shared by servers of several roots (one file per user, by default) holds jobs another
        root's server neither shows nor runs: their keys are another root's."""
        with self.read_session() as s:
            rec = s.scalars(
                select(JobRecord).where(
                    JobRecord.owner == owner, JobRecord.root == root, JobRecord.idempotency_key == key
                )
            ).first()
            if rec is not None:
                read_resume(s, [rec])
            return rec

    def list_jobs(
        self,
        owner: str | None = None,
        *,
        root: str | None = None,
        states: list[str] | None = None,
        limit: int = 100,
        before: tuple[datetime, str] | None = None,
        resume: bool = True,
        source: str | None = None,
        expires_before: datetime | None = None,
    ) -> list[JobRecord]:
        """Jobs newest first (of ``source`` as shown, when given; with ``expires_before``, only those
        whose ``expires_at`` is at or before it); ``before`` is the (created_at, id) of the last job of the
        previous page; without ``resume`` their resume data is not read."""
        with self.read_session() as s:
            q = select(JobRecord)
            if owner is not None:
                q = q.where(JobRecord.owner == owner)
            if source is not None:
                q = q.where(JobRecord.source == source)
            if expires_before is not None:
                q = q.where(JobRecord.expires_at.is_not(None), JobRecord.expires_at <= expires_before)
            if root is not None:
                q = q.where(JobRecord.root == root)
            if states:
                q = q.where(JobRecord.state.in_(states))
            if before is not None:
                created, job_id = before
                q = q.where(
                    (JobRecord.created_at < created)
                    | ((JobRecord.created_at == created) & (JobRecord.id < job_id))
                )
            q = q.order_by(JobRecord.created_at.desc(), JobRecord.id.desc()).limit(limit)
            records = list(s.scalars(q))
            if resume:
                read_resume(s, records)
            return records

    def update_job(
        self,
        job_id: str,
        *,
        load_resume: bool = True,
        events: Sequence[tuple[str, str]] = (),
        defaults: Callable[[JobRecord], dict[str, Any]] | None = None,
        expire_chunks: bool = False,
        **fields: Any,
    ) -> JobRecord | None:
        """Set ``fields`` on a job, bump ``updated_at`` and add the log lines ``events`` (``(level,
        message)``, already redacted), in one transaction; returns the updated record (without its resume
        data unless ``load_resume`` or ``fields`` sets it), or None when there is no such job. With
        ``expire_chunks`` every chunk of the job becomes ``expired`` in that transaction (its files are gone).

        ``defaults``, when given, is called with the record as read inside the transaction (with its
        resume data when ``load_resume``) and returns fields to set unless ``fields`` sets them; whatever
        it raises aborts the transaction with nothing written (a forbidden state transition)."""
        with self.session() as s:
            # With ``defaults`` the row is read FOR UPDATE (PostgreSQL, MySQL): another process's writer
            # cannot change it between the check and the write. SQLite has no row locks and its first read
            # would not take the write lock: a no-op UPDATE first takes it (no other process commits
            # until this transaction ends), so the row read next is still the row when it is written.
            if defaults is not None and s.get_bind().dialect.name == "sqlite":
                s.execute(_JOBS.update().where(_JOBS.c.id == job_id).values(id=_JOBS.c.id))
            rec = s.get(JobRecord, job_id, with_for_update=defaults is not None)
            if rec is None:
                return None
            if load_resume:
                read_resume(s, [rec])
            if defaults is not None:
                fields = {**defaults(rec), **fields}
            for key, value in fields.items():
                setattr(rec, key, value)
            if "resume" in fields:
                _show_resume(rec)
            now = utcnow()
            rec.updated_at = now
            if "resume" in fields:
                s.flush()  # the job's row before its resume row, as in write_chunks (one lock order)
                write_resume(s, job_id, fields["resume"])
            if expire_chunks:
                s.execute(
                    update(ChunkRecord)
                    .where(ChunkRecord.job_id == job_id, ChunkRecord.state != "expired")
                    .values(state="expired")
                )
            s.add_all(EventRecord(job_id=job_id, time=now, level=lv, message=m) for lv, m in events)
            return rec

    def delete_job(self, job_id: str) -> None:
        """Delete job ``job_id`` with its chunks and log lines (nothing when there is no such job)."""
        with self.session() as s:
            for table in (ChunkRecord, EventRecord, ResumeChangeRecord, ResumeRecord):
                s.execute(delete(table).where(table.job_id == job_id))
            s.execute(delete(JobRecord).where(JobRecord.id == job_id))

    # -- chunks -------------------------------------------------------------------------------------

    def get_chunk(self, job_id: str, index: int) -> ChunkRecord | None:
        """The chunk of ``job_id`` with that index, or None (also for an index no SQL integer holds)."""
        if not SQL_INT_MIN <= index <= SQL_INT_MAX:
            return None
        with self.read_session() as s:
            return s.scalars(
                select(ChunkRecord).where(ChunkRecord.job_id == job_id, ChunkRecord.index == index)
            ).first()

    def chunk_summaries(self, job_id: str) -> list[ChunkSummary]:
        """What a manifest needs of each chunk of ``job_id``, in index order, as plain tuples (building
        20,000 ORM records holds the GIL for about half a second)."""
        table = cast(Table, ChunkRecord.__table__)
        columns = [table.c[name] for name in ChunkSummary._fields]
        with self.read_session() as s:
            query = select(*columns).where(table.c.job_id == job_id).order_by(table.c.index)
            return [ChunkSummary(*row) for row in s.execute(query)]

    def list_chunks(
        self, job_id: str, *, paths: Sequence[str] = (), under: Sequence[str] = ()
    ) -> list[ChunkRecord]:
        """The chunk records of job ``job_id`` in index order; only those whose ``path`` is one of
        ``paths`` or starts with one of ``under`` when either is given (as the database compares: SQLite's
        and MySQL's ``LIKE`` ignore the case of ASCII letters, so a caller wanting an exact match checks
        again). A filtered read returns the few rows it matches: a table's folder, not the job's
        20,000 chunks."""
        query = select(ChunkRecord).where(ChunkRecord.job_id == job_id)
        if paths or under:
            query = query.where(
                or_(
                    *([ChunkRecord.path.in_(list(paths))] if paths else []),
                    *(ChunkRecord.path.startswith(prefix, autoescape=True) for prefix in under),
                )
            )
        with self.read_session() as s:
            return list(s.scalars(query.order_by(ChunkRecord.index)))

    def update_chunk(self, chunk_id: str, **fields: Any) -> ChunkRecord | None:
        with self.session() as s:
            rec = s.get(ChunkRecord, chunk_id)
            if rec is None:
                return None
            for key, value in fields.items():
                setattr(rec, key, value)
            return rec

    def write_chunks(
        self,
        job_id: str,
        new: list[dict[str, Any]],
        updates: dict[str, dict[str, Any]],
        *,
        load_job: bool = False,
        events: Sequence[tuple[str, str]] = (),
        resume_changes: Sequence[list[Any]] = (),
        held_by: str | None = None,
        **job_fields: Any,
    ) -> JobRecord | None:
        """In one transaction: insert the chunk rows ``new`` (column -> value, ``id`` / ``job_id`` /
        ``index`` / ``path`` / ``state`` at least), then apply ``updates`` (``{chunk id: {column:
        value}}``, by primary key), then set ``job_fields`` on job ``job_id`` with one ``UPDATE``
        (``updated_at`` bumped; not touched when empty; ``resume`` writes the resume data whole), add one
        row of ``resume_changes`` (:mod:`~jupyter_staging.engine.resumechanges`) when there are any, and
        add the log lines ``events`` (``(level, message)``, already redacted). Returns the job as updated
        with ``load_job`` (without its resume data; None when it is gone), else None. Costs O(rows +
        changes) whatever the number of chunks the job already has. With ``held_by``, nothing is written
        unless the job is queued or running under that runner (checked in the same transaction): raises
        :class:`~jupyter_staging.errors.JobInterrupted` (``superseded``) otherwise."""
        with self.session() as s:
            if held_by is not None:  # first: the job's row is locked for the rest of the transaction
                held = s.execute(
                    _job_update((), True), {"updated_at": utcnow(), "job_id_": job_id, "runner_": held_by}
                )
                if not held.rowcount:  # type: ignore[attr-defined]
                    raise JobInterrupted("superseded")
            # One executemany of a plain INSERT per list of columns (the ORM's bulk insert sorts and
            # inspects every row: 0.6 s of 20,000 here), then of a plain UPDATE by primary key per list of
            # columns (the ORM's bulk update costs a Python pass per row). Rows are grouped by their keys
            # in their own order, not sorted: rows made by one code path share it, and the statement names
            # the columns in that order either way.
            inserts: dict[tuple[str, ...], list[dict[str, Any]]] = {}
            for row in new:
                inserts.setdefault(tuple(row), []).append(row)
            for columns, rows in inserts.items():
                _executemany(s, _chunk_insert(columns), rows)
            by_columns: dict[tuple[str, ...], list[dict[str, Any]]] = {}
            for chunk_id, fields in updates.items():
                by_columns.setdefault(tuple(fields), []).append({**fields, "chunk_id": chunk_id})
            for columns, rows in by_columns.items():
                _executemany(s, _chunk_update(columns), rows)
            resume = job_fields.pop("resume", _UNSET)
            if resume is not _UNSET:
                job_fields.update(shown_parts(resume))
            if job_fields:  # the job's row before its resume row, as in update_job (one lock order)
                s.execute(
                    _job_update(tuple(job_fields)), {**job_fields, "updated_at": utcnow(), "job_id_": job_id}
                )
            if resume is not _UNSET:
                write_resume(s, job_id, resume)
            if resume_changes:
                add_changes(s, job_id, resume_changes)
            if events:
                now = utcnow()
                s.execute(
                    _INSERT_EVENT,
                    [{"job_id": job_id, "time": now, "level": lv, "message": m} for lv, m in events],
                )
            return s.get(JobRecord, job_id) if load_job else None

    def set_job_fields(
        self, job_id: str, *, held_by: str | None = None, **fields: Any
    ) -> dict[str, Any] | None:
        """Like :meth:`update_job`, for frequent small updates such as progress, without reading the
        whole row back (its resume data lists every item of the job): one ``UPDATE`` (``updated_at``
        bumped; with ``held_by``, only while the job is queued or running under that runner), then
        ``{"state", "requested", "runner"}`` of the job as it then is, or None when it is gone."""
        with self.session() as s:
            params = {**fields, "updated_at": utcnow(), "job_id_": job_id, "runner_": held_by}
            s.execute(_job_update(tuple(fields), held_by is not None), params)
            row = s.execute(
                select(JobRecord.state, JobRecord.requested, JobRecord.runner).where(JobRecord.id == job_id)
            ).first()
            return None if row is None else dict(row._mapping)

    def delete_chunks(self, job_id: str) -> None:
        with self.session() as s:
            s.execute(delete(ChunkRecord).where(ChunkRecord.job_id == job_id))

    # -- log ----------------------------------------------------------------------------------------

    def add_event(self, job_id: str, level: str, message: str) -> None:
        with self.session() as s:
            s.add(EventRecord(job_id=job_id, time=utcnow(), level=level, message=message))

    def list_events(self, job_id: str, *, limit: int = 1000) -> list[EventRecord]:
        with self.read_session() as s:
            rows = list(
                s.scalars(
                    select(EventRecord)
                    .where(EventRecord.job_id == job_id)
                    .order_by(EventRecord.id.desc())
                    .limit(limit)
                )
            )
        rows.reverse()
        return rows
