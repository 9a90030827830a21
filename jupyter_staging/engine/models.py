"""Request and response models of the staging API (pydantic v2).

These are the wire format of ``DESIGN.md`` ("REST API of the server extension"): clients outside this
repository rely on every field name here, so fields may be added but never renamed.
"""

from __future__ import annotations

import enum
import re
from datetime import datetime
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from jupyter_staging.errors import StagingError
from jupyter_staging.formats.csv import text_encoding
from jupyter_staging.safety.paths import check_destination_text, check_name_lengths, unsafe_character


class JobState(str, enum.Enum):
    """Life cycle of a job: ``queued -> running <-> paused -> succeeded | failed | cancelled`` (a resumed
    job is ``queued`` again), then ``expired`` once its output was removed: by its TTL, or under
    ``delete_on_ack`` by the ack of a finished job's last chunk. A job that failed ``source_expired`` is
    ``queued`` again by a submit of the same request with its URLs presigned again (``source_refreshed``)."""

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
    # A job that failed ``source_expired`` is queued again by a submit of its URL presigned again
    # (engine/refresh.py); no other failure is left, and nothing else leaves a final state but expiry.
    JobState.failed: frozenset({JobState.expired, JobState.queued}),
    JobState.cancelled: frozenset({JobState.expired}),
    JobState.expired: frozenset(),
}


class ChunkState(str, enum.Enum):
    """A chunk is ``pending`` until its file is complete under its final name, then ``ready``; a
    consumer's ack makes it ``acked``; clean-up (a cancel, a cleanup policy, the TTL, a re-run's swap)
    makes it ``expired``: its file is gone, and an ack of it answers ``chunk_expired``."""

    pending = "pending"
    ready = "ready"
    acked = "acked"
    expired = "expired"


#: The stored values of :class:`ChunkState` (``ChunkState.x.value`` is a descriptor call, about 1 µs: a
#: 20,000-file job read it 140,000 times): ``PENDING``, ``READY``, and ``DONE_STATES`` (ready or acked).
PENDING: str = ChunkState.pending.value
READY: str = ChunkState.ready.value
DONE_STATES: frozenset[str] = frozenset({ChunkState.ready.value, ChunkState.acked.value})


Method = Literal["copy", "hardlink", "symlink", "download"]
#: The methods whose outputs are links to their sources (no byte read; a hard link's size is its source's).
LINK_METHODS = ("hardlink", "symlink")
CleanupPolicy = Literal["retain", "delete_on_success", "delete_always", "delete_on_ack"]


#: Longest ``ttl_seconds`` a request may give: ten years.
MAX_TTL_SECONDS = 10 * 365 * 24 * 3600
#: Fewest and most rows per Parquet part a request may ask for (``convert.chunk_rows``).
MIN_CHUNK_ROWS = 1_000
MAX_CHUNK_ROWS = 10_000_000
#: Error codes the request validators give (as ``PydanticCustomError`` types); the server answers a
#: failed validation with the first of them (:func:`jupyter_staging.server.web.validate`).
ERROR_CODES = frozenset({"invalid_ttl", "invalid_destination", "name_too_long", "invalid_source"})


def custom_error(err: StagingError) -> PydanticCustomError:
    """``err`` as a pydantic error whose type is its ``code`` (its message is not a template)."""
    return PydanticCustomError(err.code, "{message}", {"message": err.message})


def check_source_text(source: str) -> None:
    """The checks of a source that need neither network nor file system: a URL must parse (host, port,
    IPv6 brackets) and name a host; a local path has no name over 255 bytes.

    Raises ``PydanticCustomError`` of type ``invalid_source`` or ``name_too_long`` (the value is not
    echoed).
    """
    if "://" not in source:
        try:
            check_name_lengths(source.split("/"), "source")
        except StagingError as err:
            raise custom_error(err) from None
        return
    try:
        parts = urlsplit(source)
        parts.port  # noqa: B018 - parses the port, raising ValueError when it is not one
    except ValueError:
        raise PydanticCustomError("invalid_source", "source is not a well-formed URL") from None
    if (
        unsafe_character(source) is not None
        or not parts.netloc
        or (parts.scheme.lower() in ("http", "https") and not parts.hostname)
    ):
        raise PydanticCustomError(
            "invalid_source", "source is not a well-formed URL (no host, or control characters)"
        )


class ConvertOptions(BaseModel):
    """How to convert a tabular source to chunked Parquet.

    ``chunk_rows`` rows per part file (one chunk each; an integer, not ``true`` or ``5000.0``; a request
    asks for :data:`MIN_CHUNK_ROWS` to :data:`MAX_CHUNK_ROWS`, see :class:`CreateJob`); ``compression`` a
    Parquet codec; ``hdu`` the FITS HDU index or name holding the table (default: the first table HDU);
    ``encoding`` the text encoding of a CSV/TSV source that is not UTF-8 (``latin-1``, ``cp1252``: any
    Python codec that writes line ends, delimiters and digits as ASCII, stored by its codec name; ``utf-8``
    is the default and stored as null). FITS, VOTable and ECSV state their own encoding and ignore it.
    """

    model_config = ConfigDict(extra="forbid")

    format: Literal["parquet"] = "parquet"
    # The bounds a request may ask for (checked by CreateJob) are what the OpenAPI description states.
    chunk_rows: int = Field(
        default=100_000,
        ge=1,
        le=100_000_000,
        strict=True,
        json_schema_extra={"minimum": MIN_CHUNK_ROWS, "maximum": MAX_CHUNK_ROWS},
    )
    compression: Literal["zstd", "snappy", "gzip", "lz4", "brotli", "none"] = "zstd"
    hdu: int | str | None = None
    encoding: str | None = Field(default=None, min_length=1, max_length=64)

    @field_validator("encoding")
    @classmethod
    def _encoding(cls, value: str | None) -> str | None:
        if value is None:
            return None
        name = text_encoding(value)  # ValueError: unknown, or not ASCII-compatible
        return None if name == "utf-8" else name


#: A manifest entry name: a letter or digit, then letters, digits, ``_``, ``-`` or ``.`` (128 at most).
ENTRY_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
#: Most entries one manifest job may have.
MAX_MANIFEST_ENTRIES = 1000
#: Entry names refused because the job folder already uses them.
RESERVED_ENTRY_NAMES = frozenset({"manifest.json"})
#: An expected checksum: ``sha256:<64 hex>`` or ``md5:<32 hex>`` (hex in either case).
CHECKSUM_PATTERN = r"^(sha256:[0-9a-fA-F]{64}|md5:[0-9a-fA-F]{32})$"
CHECKSUM_RE = re.compile(CHECKSUM_PATTERN)
#: What to do when the destination already holds a job's output (DESIGN.md, "Re-running a notebook").
IfExists = Literal["reuse", "refresh", "error"]


def check_checksum(value: str | None) -> str | None:
    """``value`` normalised to lower-case hex, or None; raises ValueError unless it is
    ``sha256:<64 hex>`` or ``md5:<32 hex>``."""
    if value is None:
        return None
    if not CHECKSUM_RE.fullmatch(value):
        raise ValueError("a checksum is 'sha256:<64 hex digits>' or 'md5:<32 hex digits>'")
    return value.lower()


class ManifestEntry(BaseModel):
    """A manifest entry given as an object: its ``source`` and, optionally, the ``checksum`` its bytes
    must have (``sha256:<hex>`` or ``md5:<hex>``)."""

    model_config = ConfigDict(extra="forbid")

    source: str = Field(min_length=1, max_length=8192)
    checksum: str | None = Field(default=None, json_schema_extra={"pattern": CHECKSUM_PATTERN})

    @field_validator("checksum")
    @classmethod
    def _checksum(cls, value: str | None) -> str | None:
        return check_checksum(value)


class CreateJob(BaseModel):
    """Body of ``POST /jobs``.

    Exactly one of ``source`` and ``manifest``:

    - ``source`` is a local path (absolute, as the server sees it), an ``http(s)://`` URL (presigned
      included) or an ``s3://bucket/key`` / ``s3://bucket/prefix/`` URI;
    - ``manifest`` maps entry names to such sources (``{"reference": "https://...", ...}``, at most
      :data:`MAX_MANIFEST_ENTRIES`); every entry is staged into the job's folder as ``<name>/<file name>``
      (one chunk per file; several for a folder, a prefix or a converted table). Names match
      :data:`ENTRY_NAME_RE`, differ from each other ignoring case, and are not ``manifest.json``.

    ``destination`` is a folder relative to the server's root_dir (default: a new folder under
    ``StagingApp.staging_dir``), or an object store prefix ``s3://bucket/prefix/`` under which the job
    writes ``prefix/<job_id>/...``.
    """

    model_config = ConfigDict(extra="forbid")

    source: str | None = Field(default=None, min_length=1, max_length=8192)
    manifest: dict[str, str | ManifestEntry] | None = Field(
        default=None, min_length=1, max_length=MAX_MANIFEST_ENTRIES
    )
    destination: str | None = Field(default=None, max_length=4096)
    method: Method | None = None
    convert: ConvertOptions | None = None
    name: str | None = Field(default=None, max_length=255)
    idempotency_key: str | None = Field(default=None, max_length=255)
    cleanup_policy: CleanupPolicy = "retain"
    # Strict: JSON ``true`` is not a TTL of one second, nor ``"yes"`` a boolean.
    ttl_seconds: int | None = Field(
        default=None, ge=1, strict=True, json_schema_extra={"maximum": MAX_TTL_SECONDS}
    )
    checksum: str | None = Field(default=None, json_schema_extra={"pattern": CHECKSUM_PATTERN})
    if_exists: IfExists = "reuse"
    unpack: bool = Field(default=False, strict=True)
    decompress: bool = Field(default=False, strict=True)

    @field_validator("checksum")
    @classmethod
    def _checksum(cls, value: str | None) -> str | None:
        return check_checksum(value)

    def entry_sources(self) -> dict[str, str] | None:
        """The manifest as ``{name: source}`` (entry objects reduced to their source)."""
        if self.manifest is None:
            return None
        return {k: v if isinstance(v, str) else v.source for k, v in self.manifest.items()}

    def entry_checksums(self) -> dict[str, str]:
        """``{name: checksum}`` of the manifest entries that state one."""
        if self.manifest is None:
            return {}
        return {k: v.checksum for k, v in self.manifest.items() if not isinstance(v, str) and v.checksum}

    @field_validator("source", "destination", "name", "idempotency_key")
    @classmethod
    def _no_nul(cls, value: str | None) -> str | None:
        if value is not None and "\x00" in value:
            raise ValueError("must not contain NUL characters")
        return value

    @field_validator("name")
    @classmethod
    def _name(cls, value: str | None) -> str | None:
        """A job's name is shown in lists, logs and notebooks: no control character (LF, ESC, a
        bidirectional override), as for a destination."""
        bad = None if value is None else unsafe_character(value)
        if bad is not None:
            raise PydanticCustomError(
                "invalid_request", "name contains the control character {bad}", {"bad": bad}
            )
        return value

    @field_validator("source")
    @classmethod
    def _source(cls, value: str | None) -> str | None:
        if value is not None:
            check_source_text(value)
        return value

    @field_validator("destination")
    @classmethod
    def _destination(cls, value: str | None) -> str | None:
        """An explicit destination names a folder below the root (omit it for the default folder), with
        no control character and names of at most 255 bytes; object-store URIs are checked later."""
        if value is None:
            return value
        try:
            if "://" in value:
                bad = unsafe_character(value)
                if bad is not None:
                    raise PydanticCustomError(
                        "invalid_destination", "destination contains a control character"
                    )
            else:
                check_destination_text(value)
        except StagingError as err:
            raise custom_error(err) from None
        return value

    @field_validator("ttl_seconds", mode="before")
    @classmethod
    def _whole_ttl(cls, value: Any) -> Any:
        """``5400.0`` (``1.5 * 3600`` in Python) is 5400 seconds; ``true`` and ``5400.5`` stay refused."""
        if isinstance(value, float) and value.is_integer():
            return int(value)
        return value

    @field_validator("ttl_seconds")
    @classmethod
    def _ttl(cls, value: int | None) -> int | None:
        if value is not None and value > MAX_TTL_SECONDS:
            raise PydanticCustomError(
                "invalid_ttl", "ttl_seconds is at most {limit} (ten years)", {"limit": MAX_TTL_SECONDS}
            )
        return value

    @field_validator("convert")
    @classmethod
    def _chunk_rows(cls, value: ConvertOptions | None) -> ConvertOptions | None:
        if value is not None and not MIN_CHUNK_ROWS <= value.chunk_rows <= MAX_CHUNK_ROWS:
            raise ValueError(f"chunk_rows must be an integer from {MIN_CHUNK_ROWS} to {MAX_CHUNK_ROWS}")
        return value

    @field_validator("manifest")
    @classmethod
    def _entries(cls, value: dict[str, str | ManifestEntry] | None) -> dict[str, str | ManifestEntry] | None:
        if value is None:
            return value
        seen: set[str] = set()
        for name, given in value.items():
            source = given if isinstance(given, str) else given.source
            if not ENTRY_NAME_RE.fullmatch(name) or name.lower() in RESERVED_ENTRY_NAMES:
                raise ValueError(
                    f"entry name {name[:130]!r} is not allowed: use 1-128 letters, digits, '_', '-' or '.', "
                    "starting with a letter or digit (and not 'manifest.json')"
                )
            if name.lower() in seen:
                raise ValueError(f"entry names must differ (ignoring case): {name!r} is given twice")
            seen.add(name.lower())
            if not source or len(source) > 8192 or "\x00" in source:
                raise ValueError(f"entry {name!r}: the source must be 1-8192 characters without NUL")
            check_source_text(source)
        return value

    @model_validator(mode="after")
    def _one_source(self) -> CreateJob:
        if (self.source is None) == (self.manifest is None):
            raise ValueError("give exactly one of 'source' (one source) and 'manifest' (named sources)")
        return self


class JobError(BaseModel):
    """Why a job failed: a stable ``code`` and a ``message`` for people."""

    code: str
    message: str


class TaskCounts(BaseModel):
    """Where a job's work runs when its server uses a distributed executor (``DaskExecutor``): tasks
    ``queued`` (submitted, waiting for a worker), ``running`` and ``done`` (finished in this run), and
    ``workers``: running tasks by worker (the worker's name, or its address ``tcp://host:port``)."""

    queued: int = 0
    running: int = 0
    done: int = 0
    workers: dict[str, int] = Field(default_factory=dict)


class Progress(BaseModel):
    """Progress of a job.

    ``bytes_done`` / ``bytes_total`` count source bytes only (read or downloaded), so ``bytes_done <=
    bytes_total`` whenever the total is known. ``chunks_done`` counts output chunks as they become ready
    (for a conversion, each Parquet part as it is written); ``chunks_total`` is null until known.
    ``rows_done``: table rows converted so far. ``output_bytes``: bytes of Parquet written so far (0 for a
    job that converts nothing). ``rate`` is source bytes per second over the recent past; ``eta_seconds``
    is seconds to completion at that rate (null when unknown).
    """

    bytes_done: int = 0
    bytes_total: int | None = None
    chunks_done: int = 0
    chunks_total: int | None = None
    rows_done: int = 0
    output_bytes: int = 0
    rate: float | None = None
    eta_seconds: float | None = None
    #: Tasks of a job running on a distributed executor; null on the server's own threads.
    tasks: TaskCounts | None = None


class DescribeChunk(BaseModel):
    """One chunk of a job's output: a file relative to the job's destination, or for an object store
    destination the object's URI (``s3://bucket/prefix/<job_id>/<file>``).

    ``sha256``: the hex digest of the chunk's bytes once it is ready; null for a ``hardlink`` or
    ``symlink`` chunk whose bytes were not read (a link job reads a file only to verify an expected
    checksum). ``entry``: the manifest entry the chunk belongs to (manifest jobs). ``error``: why the
    entry failed (the chunk then stays ``pending``). ``url`` / ``url_expires_at``: a presigned HTTPS GET
    URL of a ready object-store chunk and when it stops working (UTC). The URL is a credential: it is
    present only in the answers of ``GET /jobs/{id}/chunks`` and
    ``GET /jobs/{id}/chunks/{chunk_id}/refresh`` (to the job's owner), made afresh for each request and
    never stored, logged or announced.
    """

    id: str
    index: int
    path: str
    state: ChunkState
    rows: int | None = None
    bytes: int | None = None
    sha256: str | None = None
    content_type: str | None = None
    entry: str | None = None
    error: JobError | None = None
    url: str | None = None
    url_expires_at: datetime | None = None


class DescribeJob(BaseModel):
    """A job as every endpoint returns it (``DESIGN.md``).

    ``source`` is redacted (no signature or token); for a manifest job it reads ``manifest:<n> entries``
    and ``entries`` lists the entry names (their sources are not shown). ``destination`` is a folder
    relative to the server's root_dir, or the job's own object store prefix ``s3://bucket/prefix/<id>/``.
    """

    id: str
    name: str
    owner: str
    state: JobState
    source: str
    entries: list[str] | None = None
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
    #: True when this answer reused unchanged output: every source fingerprint still matched, no byte moved.
    up_to_date: bool = False
    #: True when this answer gave the job the presigned URL(s) just submitted in place of its own (the same
    #: objects signed again): a queued or paused job reads them from its next run, a running one once the
    #: URLs it started with expire (queued again, it continues from what it finished), a job that had
    #: failed ``source_expired`` is queued again and continues from the bytes it kept.
    source_refreshed: bool = False
    #: What a user should know that is not an error, one line each: a requested conversion that did not
    #: apply (``"image.png: not a table: staged as it is"``).
    notices: list[str] = Field(default_factory=list)


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


MAX_CHUNK_PAGE = 10_000  # the most chunks one page of ``GET /jobs/{id}/chunks`` may ask for (``limit``)


class ChunksQuery(BaseModel):
    """Query of ``GET /jobs/{id}/chunks``: the chunks of index ``>= offset``, at most ``limit`` (<= 10,000;
    none: all of them). Raises ``ValidationError`` for a negative or non-integer value or a larger limit."""

    model_config = ConfigDict(extra="forbid")

    offset: int = Field(default=0, ge=0, le=2**31 - 1)
    limit: int | None = Field(default=None, ge=0, le=MAX_CHUNK_PAGE)


class ChunkList(BaseModel):
    """Answer of ``GET /jobs/{job_id}/chunks``: the chunks asked for in index order; ``total`` of the job."""

    chunks: list[DescribeChunk]
    total: int


def dump(model: BaseModel) -> dict[str, Any]:
    """A model as JSON-ready dict with ISO-8601 UTC timestamps (``...Z``)."""
    return model.model_dump(mode="json")
