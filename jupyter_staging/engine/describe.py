"""The API views of jobs and chunks (pydantic models) and list cursors."""

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
)
from jupyter_staging.engine.progress import LiveProgress
from jupyter_staging.engine.store import ChunkRecord, JobRecord
from jupyter_staging.errors import InvalidRequest
from jupyter_staging.safety.redact import redact_url


def describe_job(rec: JobRecord, live: LiveProgress | None = None) -> DescribeJob:
    """The API view of job ``rec``; ``live`` counters of a running job (bytes, rows, rate) win over
    the persisted ones when larger. ``eta_seconds`` is derived from the rate (bytes per second)."""
    bytes_done = rec.bytes_done
    rows_done = rec.rows_done
    rate = None
    if live is not None:
        bytes_done = max(bytes_done, live.bytes_done)
        rows_done = max(rows_done, live.rows_done)
        rate = live.rate
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
            rate=rate,
            eta_seconds=eta,
        ),
        error=error,
        cleanup_policy=rec.cleanup_policy,  # type: ignore[arg-type]
        idempotency_key=rec.idempotency_key,
        created_at=rec.created_at,
        updated_at=rec.updated_at,
        started_at=rec.started_at,
        finished_at=rec.finished_at,
        expires_at=rec.expires_at,
    )


def describe_chunk(c: ChunkRecord) -> DescribeChunk:
    """The API view of chunk ``c`` (``bytes`` in bytes, ``rows`` in rows)."""
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
