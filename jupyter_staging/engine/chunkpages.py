"""One page of a job's chunks, read through the ``(job_id, index)`` index (migration 0010).

``GET /jobs/{id}/chunks?offset=N&limit=M`` and a kernel's ``iter_chunks`` ask for the chunks of index
``>= N``, in index order, at most ``M``: a range of the index, never the job's 20,000 rows read and sorted
to keep a few of them.

The page is read and described :data:`SLICE` chunks at a time. A caller that takes each slice and lets it
go (``sink``: the server's listing encodes it to JSON) never holds a page's chunk objects all at once: for
20,000 chunks those were 20,000 ORM instances and 20,000 models, about 200,000 objects, whose allocation
set off one or two of the collector's full passes over the server's heap per listing (0.1-0.5 s each,
holding the GIL, so every other request of the server waited).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields
from typing import TYPE_CHECKING

from sqlalchemy import func, select

from jupyter_staging.engine.models import ChunkList, DescribeChunk
from jupyter_staging.engine.schema import ChunkRecord, ChunkRow, JobChunk

if TYPE_CHECKING:
    from jupyter_staging.engine.database import SQLStore

__all__ = ["SLICE", "Describe", "Sink", "read_chunk_page"]

#: Chunks read from the database (``yield_per``) and described at a time.
SLICE = 64

#: Takes each slice of a page's described chunks in index order (None: they are returned in the page).
Sink = Callable[[list[DescribeChunk]], object] | None

#: Makes the API view of a chunk (:meth:`~jupyter_staging.engine.manager.StagingManager.describer`).
Describe = Callable[[JobChunk], DescribeChunk]

#: The columns of a chunk record, in the order of :class:`ChunkRow`'s fields.
_COLUMNS = [getattr(ChunkRecord, f.name) for f in fields(ChunkRow)]


def read_chunk_page(
    store: SQLStore,
    job_id: str,
    describe: Describe,
    *,
    offset: int = 0,
    limit: int | None = None,
    sink: Sink = None,
) -> ChunkList:
    """The chunks of job ``job_id`` of index ``>= offset`` in index order, at most ``limit`` (None: all of
    them), each made by ``describe`` from a :class:`ChunkRow`, and ``total``, the number of chunks the job
    has. ``offset`` and ``limit`` are non-negative (the caller validated them:
    :class:`~jupyter_staging.engine.models.ChunksQuery`).

    With ``sink``, each :data:`SLICE` described chunks are handed to ``sink`` in turn, all read in one
    transaction (one consistent page), and the answer's ``chunks`` is empty."""
    count = select(func.count()).select_from(ChunkRecord).where(ChunkRecord.job_id == job_id)
    query = select(*_COLUMNS).where(ChunkRecord.job_id == job_id)
    if offset:
        query = query.where(ChunkRecord.index >= offset)
    query = query.order_by(ChunkRecord.index)
    if limit is not None:
        query = query.limit(limit)
    chunks: list[DescribeChunk] = []
    keep = sink or chunks.extend
    with store.read_session() as s:
        total = int(s.scalar(count) or 0)
        for part in s.execute(query.execution_options(yield_per=SLICE)).partitions():
            keep([describe(ChunkRow(*row)) for row in part])
    return ChunkList(chunks=chunks, total=total)
