"""A job's resume data in the database: the last whole write (``staging_job_resume``) and the changes
written since (``staging_resume_changes``, :mod:`jupyter_staging.engine.resumechanges`), read and written
in the caller's session (:class:`~jupyter_staging.engine.store.Store`'s transactions)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, cast

from sqlalchemy import Integer, Table, delete, insert, literal, select, union_all, update
from sqlalchemy.orm import Session

from jupyter_staging.engine.resumechanges import apply_changes
from jupyter_staging.engine.schema import JobRecord, ResumeChangeRecord, ResumeRecord

_RESUME = cast(Table, ResumeRecord.__table__)
_CHANGES = cast(Table, ResumeChangeRecord.__table__)
_INSERT_CHANGES = insert(_CHANGES)


#: Job ids per ``SELECT`` of resume data, which names them twice (its whole rows, its rows of changes):
#: 2 x 400 + 1 stays below every database's limit of bound parameters (999 on SQLite before 3.32, 32,766
#: since; 65,535 with psycopg).
RESUME_BATCH = 400


def read_resume(s: Session, records: Sequence[JobRecord]) -> None:
    """Read the resume data of ``records`` into them; None for a job without any. One ``SELECT`` per
    :data:`RESUME_BATCH` jobs reads the last whole write and the changes written since (``UNION ALL``:
    one statement, so one snapshot on every database; two could see a compaction in between and lose the
    changes it folded in), applied in the order written."""
    found: dict[str, Any] = {}
    writes: dict[str, list[list[Any]]] = {}
    ids = [rec.id for rec in records]
    for start in range(0, len(ids), RESUME_BATCH):
        batch = ids[start : start + RESUME_BATCH]
        whole = select(_RESUME.c.job_id, literal(0, Integer).label("seq"), _RESUME.c.resume.label("data"))
        changed = select(_CHANGES.c.job_id, _CHANGES.c.id, _CHANGES.c.changes)
        query = union_all(
            whole.where(_RESUME.c.job_id.in_(batch)), changed.where(_CHANGES.c.job_id.in_(batch))
        ).order_by("seq")
        for job_id, seq, data in s.execute(query).tuples():
            if seq == 0:
                found[job_id] = data
            else:
                writes.setdefault(job_id, []).append(data)
    for rec in records:
        rec.resume = apply_changes(found.get(rec.id), writes.get(rec.id, ()))


def write_resume(s: Session, job_id: str, resume: dict[str, Any] | None) -> None:
    """Set the resume data of job ``job_id`` (its row made when missing), replacing the changes written
    since its last whole write, in session ``s``'s transaction."""
    s.execute(delete(_CHANGES).where(_CHANGES.c.job_id == job_id))
    known = s.execute(select(_RESUME.c.job_id).where(_RESUME.c.job_id == job_id)).first()
    if known is None:
        s.execute(insert(_RESUME).values(job_id=job_id, resume=resume))
    else:
        s.execute(update(_RESUME).where(_RESUME.c.job_id == job_id).values(resume=resume))


def add_resume(s: Session, job_id: str, resume: dict[str, Any]) -> None:
    """The first whole write of job ``job_id``'s resume data (its row made with the job's), in ``s``."""
    s.execute(insert(_RESUME).values(job_id=job_id, resume=resume))


def add_changes(s: Session, job_id: str, changes: Iterable[list[Any]]) -> None:
    """One row of ``changes`` (each a change of :mod:`~jupyter_staging.engine.resumechanges`, in the order
    made) to job ``job_id``'s resume data, applied on top of its last whole write when read, in ``s``."""
    s.execute(_INSERT_CHANGES, {"job_id": job_id, "changes": list(changes)})
