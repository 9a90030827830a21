"""Request and response models of the staging API (pydantic v2).

These are the wire format of ``DESIGN.md`` ("REST API of the server extension"): clients outside this
repository rely on every field name here, so fields may be added but never renamed.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class JobState(str, enum.Enum):
    """Life cycle of a job: ``queued -> running <-> paused -> succeeded | failed | cancelled``, then
    ``expired`` once TTL clean-up removed the output."""

    queued = "queued"
    running = "running"
    paused = "paused"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"
    expired = "expired"

    @property
    def is_final(self) -> bool:
        """True for states a job never leaves by itself (succeeded, failed, cancelled, expired)."""
        return self in FINAL_STATES


FINAL_STATES = frozenset({JobState.succeeded, JobState.failed, JobState.cancelled, JobState.expired})

#: Allowed transitions of the job state machine (``DESIGN.md``, "Job model").
TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.queued: frozenset({JobState.running, JobState.paused, JobState.cancelled, JobState.failed}),
    JobState.running: frozenset(
        {JobState.paused, JobState.succeeded, JobState.failed, JobState.cancelled, JobState.queued}
    ),
    JobState.paused: frozenset({JobState.queued, JobState.cancelled, JobState.failed}),
    JobState.succeeded: frozenset({JobState.expired}),
    JobState.failed: frozenset({JobState.expired}),
    JobState.cancelled: frozenset({JobState.expired}),
    JobState.expired: frozenset(),
}


class ChunkState(str, enum.Enum):
    """A chunk is ``pending`` until its file is complete under its final name, then ``ready``; a
    consumer's ack makes it ``acked``; clean-up makes it ``expired``."""

    pending = "pending"
    ready = "ready"
    acked = "acked"
    expired = "expired"


Method = Literal["copy", "hardlink", "symlink", "download"]
CleanupPolicy = Literal["retain", "delete_on_success", "delete_always", "delete_on_ack"]


class ConvertOptions(BaseModel):
    """How to convert a tabular source to chunked Parquet.

    ``chunk_rows`` rows per part file (one chunk each); ``compression`` a Parquet codec; ``hdu`` the FITS
    HDU index or name holding the table (default: the first table HDU).
    """

    model_config = ConfigDict(extra="forbid")

    format: Literal["parquet"] = "parquet"
    chunk_rows: int = Field(default=100_000, ge=1, le=100_000_000)
    compression: Literal["zstd", "snappy", "gzip", "lz4", "brotli", "none"] = "zstd"
    hdu: int | str | None = None


class CreateJob(BaseModel):
    """Body of ``POST /jobs``.

    ``source`` is a local path (absolute, as the server sees it), an ``http(s)://`` URL or an
    ``s3://bucket/key`` / ``s3://bucket/prefix/`` URI. ``destination`` is a folder relative to the
    server's root_dir (default: a new folder under ``StagingApp.staging_dir``).
    """

    model_config = ConfigDict(extra="forbid")

    source: str = Field(min_length=1, max_length=8192)
    destination: str | None = Field(default=None, max_length=4096)
    method: Method | None = None
    convert: ConvertOptions | None = None
    name: str | None = Field(default=None, max_length=255)
    idempotency_key: str | None = Field(default=None, max_length=255)
    cleanup_policy: CleanupPolicy = "retain"
    ttl_seconds: int | None = Field(default=None, ge=1)

    @field_validator("source", "destination", "name", "idempotency_key")
    @classmethod
    def _no_nul(cls, value: str | None) -> str | None:
        if value is not None and "\x00" in value:
            raise ValueError("must not contain NUL characters")
        return value


class JobError(BaseModel):
    """Why a job failed: a stable ``code`` and a ``message`` for people."""

    code: str
    message: str


class Progress(BaseModel):
    """Progress of a job. Bytes are bytes; ``rate`` is bytes per second over the recent past;
    ``eta_seconds`` is seconds to completion at that rate (null when unknown)."""

    bytes_done: int = 0
    bytes_total: int | None = None
    chunks_done: int = 0
    chunks_total: int | None = None
    rows_done: int = 0
    rate: float | None = None
    eta_seconds: float | None = None


class DescribeChunk(BaseModel):
    """One chunk of a job's output: a file relative to the job's destination (or an object URI)."""

    id: str
    index: int
    path: str
    state: ChunkState
    rows: int | None = None
    bytes: int | None = None
    sha256: str | None = None
    content_type: str | None = None


class DescribeJob(BaseModel):
    """A job as every endpoint returns it (``DESIGN.md``)."""

    id: str
    name: str
    owner: str
    state: JobState
    source: str
    destination: str
    method: Method
    convert: ConvertOptions | None = None
    progress: Progress = Field(default_factory=Progress)
    error: JobError | None = None
    cleanup_policy: CleanupPolicy = "retain"
    idempotency_key: str | None = None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    expires_at: datetime | None = None


class ListJobsQuery(BaseModel):
    """Query of ``GET /jobs``: optional ``state`` filter, page ``limit`` and opaque ``cursor``."""

    model_config = ConfigDict(extra="forbid")

    state: JobState | None = None
    limit: int = Field(default=100, ge=1, le=1000)
    cursor: str | None = None


class ListJobsResponse(BaseModel):
    """Answer of ``GET /jobs``."""

    jobs: list[DescribeJob]
    next_cursor: str | None = None


def dump(model: BaseModel) -> dict[str, Any]:
    """A model as JSON-ready dict with ISO-8601 UTC timestamps (``...Z``)."""
    return model.model_dump(mode="json")
