"""A page of a job's chunks read a slice at a time (the server's listing, ``read_chunk_page`` with a sink)
on each job database the server may use: SQLite, PostgreSQL and MariaDB (whose ``yield_per`` streams the
rows through a server-side cursor). The slices, joined, are the page read whole, in index order."""

from __future__ import annotations

from jupyter_staging.engine.chunkpages import SLICE, read_chunk_page
from jupyter_staging.engine.describe import describe_chunk
from jupyter_staging.engine.models import DescribeChunk
from jupyter_staging.engine.store import Store
from tests.engine.test_chunk_page_index import chunk_rows, job


def test_a_page_in_slices_is_the_page_on_every_database(db_url):
    store = Store(db_url)
    try:
        count = 3 * SLICE + 1
        for job_id, n in (("a", count), ("b", 5)):
            store.add_job(job(job_id))
            store.write_chunks(job_id, chunk_rows(job_id, n), {})
        for offset, limit in ((0, None), (SLICE - 1, 2 * SLICE), (count, None)):
            whole = read_chunk_page(store, "a", describe_chunk, offset=offset, limit=limit)
            slices: list[list[DescribeChunk]] = []
            streamed = read_chunk_page(
                store, "a", describe_chunk, offset=offset, limit=limit, sink=slices.append
            )
            assert streamed.chunks == [] and streamed.total == whole.total == count
            assert [c for s in slices for c in s] == whole.chunks
            assert all(0 < len(s) <= SLICE for s in slices)
            end = count if limit is None else offset + limit
            assert [c.index for c in whole.chunks] == list(range(offset, end))
    finally:
        store.close()
