"""The API views of jobs and chunks (pydantic models), list cursors, and byte counts for people."""

from __future__ import annotations

import base64
from datetime import datetime, timezone

from jupyter_staging.engine.models import (
    ChunkState,
    ConvertOptions,
    DescribeChunk,
    DescribeJob,
    JobError,
    JobState,
    Progress,
    TaskCounts,
)
from jupyter_staging.engine.progress import LiveProgress
from jupyter_staging.engine.schema import JobChunk
from jupyter_staging.engine.store import JobRecord
from jupyter_staging.errors import InvalidRequest
from jupyter_staging.safety.redact import redact_url

#: Decimal (SI) byte units, as the JupyterLab panel shows them (``labextension/src/format.ts``).
#: Most files a notice names one by one; more are counted.
MAX_NOTICE_NAMES = 3


def describe_job(rec: JobRecord, live: LiveProgress | None = None) -> DescribeJob:
    """The API view of job ``rec``; ``live`` counters of a running job (bytes, rows, rate) win over
    the persisted ones when larger. ``eta_seconds`` is derived from the rate (bytes per second).

    ``progress.bytes_done`` never exceeds a known ``bytes_total`` (both count source bytes);
    ``progress.output_bytes`` sums the Parquet parts the conversion recorded; ``notices`` says which
    files were staged as they are although a conversion was asked for, and which tables have columns read
    as bytes (a CSV that is not UTF-8)."""
    bytes_done = rec.bytes_done
    rows_done = rec.rows_done
    rate = None
    tasks = None
    if live is not None:
        tasks = TaskCounts(**live.tasks) if live.tasks is not None else None
        bytes_done = max(bytes_done, live.bytes_done)
        rows_done = max(rows_done, live.rows_done)
        rate = live.rate
    if rec.bytes_total is not None:
        bytes_done = min(bytes_done, rec.bytes_total)
    eta = None
    if rate and rec.bytes_total is not None and rec.state == JobState.running.value:
        eta = max(0.0, (rec.bytes_total - bytes_done) / rate)
    error = JobError(code=rec.error_code, message=rec.error_message or "") if rec.error_code else None
    return DescribeJob(
        id=rec.id,
        name=rec.name,
        owner=rec.owner,
        state=JobState(rec.state),
        source=redact_url(rec.source),
        entries=list(rec.entries) if rec.entries is not None else None,
        destination=rec.destination,
        method=rec.method,  # type: ignore[arg-type]
        convert=ConvertOptions(**rec.convert) if rec.convert else None,
        progress=Progress(
            bytes_done=bytes_done,
            bytes_total=rec.bytes_total,
            chunks_done=rec.chunks_done,
            chunks_total=rec.chunks_total,
            rows_done=rows_done,
            output_bytes=(
                rec.output_bytes
                if rec.output_bytes is not None
                else sum(int(n) for n in (rec.part_bytes or {}).values())
            ),
            rate=rate,
            eta_seconds=eta,
            tasks=tasks,
        ),
        error=error,
        cleanup_policy=rec.cleanup_policy,  # type: ignore[arg-type]
        idempotency_key=rec.idempotency_key,
        created_at=rec.created_at,
        updated_at=rec.updated_at,
        started_at=rec.started_at,
        finished_at=rec.finished_at,
        expires_at=rec.expires_at,
        notices=conversion_notices(rec.not_converted or {}) + bytes_notices(rec.bytes_columns or {}),
    )


def bytes_notices(bytes_columns: dict[str, list[str]]) -> list[str]:
    """One line per converted table with columns read as bytes (``{"names.csv": ["name"]}``): the text
    was not UTF-8, and the line says how to read it as text."""
    notices = []
    for name, columns in bytes_columns.items():
        shown = ", ".join(str(c) for c in list(columns)[:MAX_NOTICE_NAMES])
        more = ", ..." if len(columns) > MAX_NOTICE_NAMES else ""
        notices.append(
            f"{name}: column{'s' if len(columns) > 1 else ''} {shown}{more} kept as bytes (not UTF-8 text); "
            "stage it again with its encoding (encoding='latin-1', say) to read text"
        )
    return notices


def conversion_notices(not_converted: dict[str, str]) -> list[str]:
    """One line per reason a requested conversion did not apply, from output name -> reason
    (``{"m31.png": "not a table"}``): ``["m31.png: not a table: staged as it is"]``; past
    :data:`MAX_NOTICE_NAMES` files of one reason, ``"5 files (a.png, b.png, c.png, ...): not a table: staged
    as they are"``."""
    by_reason: dict[str, list[str]] = {}
    for name, reason in not_converted.items():
        by_reason.setdefault(str(reason), []).append(str(name))
    notices = []
    for reason, names in by_reason.items():
        if len(names) == 1:
            notices.append(f"{names[0]}: {reason}: staged as it is")
            continue
        shown = ", ".join(names[:MAX_NOTICE_NAMES]) + (", ..." if len(names) > MAX_NOTICE_NAMES else "")
        notices.append(f"{len(names)} files ({shown}): {reason}: staged as they are")
    return notices


def describe_chunk(c: JobChunk) -> DescribeChunk:
    """The API view of chunk ``c``, a record or a :class:`~jupyter_staging.engine.schema.ChunkRow` (``bytes``
    in bytes, ``rows`` in rows)."""
    return DescribeChunk(
        id=str(c.index),
        index=c.index,
        path=c.path,
        state=ChunkState(c.state),
        rows=c.rows,
        bytes=c.bytes,
        sha256=c.sha256,
        content_type=c.content_type,
        entry=c.entry,
        error=JobError(code=c.error_code, message=c.error_message or "") if c.error_code else None,
    )


def encode_cursor(rec: JobRecord) -> str:
    """An opaque cursor pointing after job ``rec`` in a newest-first listing."""
    raw = f"{rec.created_at.isoformat()}|{rec.id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """``(created_at, job_id)`` of a cursor; raises :class:`InvalidRequest` (``invalid_cursor``)."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        created, job_id = raw.split("|", 1)
        when = datetime.fromisoformat(created)
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        return when, job_id
    except Exception:
        raise InvalidRequest("malformed cursor", code="invalid_cursor") from None
