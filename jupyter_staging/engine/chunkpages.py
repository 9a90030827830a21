"""One page of a job's chunks, read through the ``(job_id, index)`` index (migration 0010).

``GET /jobs/{id}/chunks?offset=N&limit=M`` and a kernel's ``iter_chunks`` ask for the chunks of index
``>= N``, in index order, at most ``M``: a range of the index, never the job's 20,000 rows read and sorted
to keep a few of them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy import func, select

from jupyter_staging.engine.schema import ChunkRecord

if TYPE_CHECKING:
    from jupyter_staging.engine.database import SQLStore

__all__ = ["read_chunk_page"]


def read_chunk_page(
    store: SQLStore, job_id: str, *, offset: int = 0, limit: int | None = None
) -> tuple[list[ChunkRecord], int]:
    """The chunk records of job ``job_id`` of index ``>= offset`` in index order, at most ``limit`` (None:
    all of them), and the number of chunks the job has. ``offset`` and ``limit`` are non-negative (the
    caller validated them: :class:`~jupyter_staging.engine.models.ChunksQuery`)."""
    count = select(func.count()).select_from(ChunkRecord).where(ChunkRecord.job_id == job_id)
    query = select(ChunkRecord).where(ChunkRecord.job_id == job_id)
    if offset:
        query = query.where(ChunkRecord.index >= offset)
    query = query.order_by(ChunkRecord.index)
    if limit is not None:
        query = query.limit(limit)
    with store.read_session() as s:
        total = int(s.scalar(count) or 0)
        return list(s.scalars(query)), total
