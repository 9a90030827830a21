"""Presigned GET URLs of a job's chunks in object storage: in a listing (:func:`with_url`) and refreshed one
at a time (:func:`refreshed`, ``GET /jobs/{id}/chunks/{chunk_id}/refresh``).

URLs are SigV4 query-signed (``X-Amz-Expires``; the S3 API's "Authenticating Requests: Using Query
Parameters") or Azure SAS, made for one answer and never stored, logged or announced.
"""

from __future__ import annotations

from jupyter_staging.destinations.base import Destination
from jupyter_staging.engine.describe import describe_chunk
from jupyter_staging.engine.models import ChunkState, DescribeChunk
from jupyter_staging.engine.schema import JobChunk
from jupyter_staging.engine.store import JobRecord
from jupyter_staging.errors import InvalidState


def chunk_expired(index: int, why: str) -> InvalidState:
    """The 409 ``chunk_expired`` of chunk ``index`` whose file or object is gone for good (``why``): an ack
    or a URL refresh of it can never succeed, unlike one of a chunk ``chunk_not_ready`` yet."""
    return InvalidState(f"chunk {index} is gone: {why}", code="chunk_expired")


def with_url(
    destination: Destination, rec: JobRecord, chunk: JobChunk, *, expiry: int, strict: bool = False
) -> DescribeChunk:
    """The API view of ``chunk`` of job ``rec`` with a presigned GET URL valid ``expiry`` seconds, when its
    object is kept (``ready``, or ``acked`` unless acked objects are deleted: ``delete_on_ack``). A
    destination that ``cannot_presign`` (Azure credentials without an account key) leaves the URL out,
    or raises that :class:`InvalidState` when ``strict`` (a refresh)."""
    described = describe_chunk(chunk)
    kept = chunk.state == ChunkState.ready.value or (
        chunk.state == ChunkState.acked.value and rec.cleanup_policy != "delete_on_ack"
    )
    if kept and "://" in chunk.path:
        try:
            signed = destination.presign(chunk.path, expiry)
        except InvalidState as exc:
            if strict or exc.code != "cannot_presign":
                raise
            signed = None
        if signed is not None:
            described.url, described.url_expires_at = signed
    return described


def refreshed(destination: Destination, rec: JobRecord, chunk: JobChunk, *, expiry: int) -> DescribeChunk:
    """``chunk`` of job ``rec`` (in object storage) with a new presigned URL valid ``expiry`` seconds, after
    one request to the store (``Destination.holds``: S3 HeadObject, Azure Get Blob Properties) finds its
    object there.

    Raises :class:`InvalidState` (409) with code ``chunk_not_ready`` for a chunk not uploaded yet,
    ``chunk_expired`` for one whose object is gone for good (``expired``, acked under ``delete_on_ack``, or
    removed from the store behind the job's back), ``cannot_presign`` as :func:`with_url` does;
    :class:`~jupyter_staging.errors.DestinationUnavailable` (503) when the store cannot be reached."""
    described = with_url(destination, rec, chunk, expiry=expiry, strict=True)
    if described.url is not None and not destination.holds(chunk.path):  # one HEAD, nothing changed
        raise chunk_expired(chunk.index, "its object is no longer in the store (removed outside the job)")
    if described.url is None and chunk.state == ChunkState.pending.value:
        raise InvalidState(f"chunk {chunk.index} is not uploaded yet", code="chunk_not_ready")
    if described.url is None:
        raise chunk_expired(chunk.index, f"its object was removed ({chunk.state})")
    return described
