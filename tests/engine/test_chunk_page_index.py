"""Migration 0010: a page of a job's chunks (``offset`` / ``limit``) is read through the ``(job_id, index)``
index, in index order, with the job's total; a downgrade to 0009 drops the index and an upgrade makes it
again."""

from __future__ import annotations

from datetime import datetime, timezone

import sqlalchemy as sa

from jupyter_staging.engine.chunkpages import SLICE, read_chunk_page
from jupyter_staging.engine.describe import describe_chunk
from jupyter_staging.engine.migrate import JOB_MIGRATIONS, current_revision
from jupyter_staging.engine.models import ChunkList, DescribeChunk
from jupyter_staging.engine.store import JobRecord, Store
from tests.hub.test_migrations import downgrade_jobs

INDEX = "ix_staging_chunks_job_index"
NOW = datetime(2026, 12, 6, 12, 0, tzinfo=timezone.utc)


def job(job_id: str) -> JobRecord:
    return JobRecord(
        id=job_id, owner="alice", root="/home/alice", name="k", source="/archive", destination=job_id,
        method="copy", state="running", cleanup_policy="retain", created_at=NOW, updated_at=NOW,
    )  # fmt: skip


def chunk_rows(job_id: str, count: int) -> list[dict]:
    # written in reverse: the order of a page comes from the index, not the order of insertion
    return [
        {"id": f"{job_id}-{i}", "job_id": job_id, "index": i, "path": f"f{i}", "state": "ready"}
        for i in reversed(range(count))
    ]


def indexes(engine: sa.Engine) -> set[str]:
    return {ix["name"] for ix in sa.inspect(engine).get_indexes("staging_chunks")}


def test_a_page_of_chunks_is_an_index_range_and_the_migration_goes_both_ways(tmp_path):
    url = f"sqlite:///{tmp_path / 'jobs.sqlite'}"
    store = Store(url)
    engine = sa.create_engine(url)
    try:
        assert INDEX in indexes(engine)
        for job_id, count in (("a", 50), ("b", 7)):
            store.add_job(job(job_id))
            store.write_chunks(job_id, chunk_rows(job_id, count), {})
        page = read_chunk_page(store, "a", describe_chunk, offset=10, limit=5)
        assert [c.index for c in page.chunks] == [10, 11, 12, 13, 14] and page.total == 50
        assert [c.index for c in read_chunk_page(store, "a", describe_chunk, offset=48).chunks] == [48, 49]
        assert read_chunk_page(store, "b", describe_chunk) == ChunkList(
            chunks=[describe_chunk(c) for c in sorted(store.list_chunks("b"), key=lambda c: c.index)], total=7
        )
        assert read_chunk_page(store, "b", describe_chunk, offset=7) == ChunkList(chunks=[], total=7)
        assert read_chunk_page(store, "nope", describe_chunk, limit=3) == ChunkList(chunks=[], total=0)

        with engine.connect() as conn:
            plan = conn.exec_driver_sql(
                "EXPLAIN QUERY PLAN SELECT * FROM staging_chunks WHERE job_id = 'a' AND \"index\" >= 10 "
                'ORDER BY "index" LIMIT 5'
            ).all()
        details = " ".join(str(row[-1]) for row in plan)
        assert INDEX in details and "TEMP B-TREE" not in details, details  # no sort of the job's rows

        downgrade_jobs(engine, "0009")
        engine.dispose()
        assert INDEX not in indexes(engine)
    finally:
        store.close()
    Store(url).close()
    assert INDEX in indexes(engine) and current_revision(engine, JOB_MIGRATIONS) == JOB_MIGRATIONS.head()


def test_a_page_handed_to_a_sink_comes_in_slices_in_index_order(tmp_path):
    """With a sink, a page is read and described a slice at a time (the server encodes each and lets it
    go): the slices, joined, are the page read without one; none is larger than ``SLICE``."""
    store = Store(f"sqlite:///{tmp_path / 'jobs.sqlite'}")
    try:
        count = 2 * SLICE + 5
        store.add_job(job("a"))
        store.write_chunks("a", chunk_rows("a", count), {})
        whole = read_chunk_page(store, "a", describe_chunk, offset=3)
        slices: list[list[DescribeChunk]] = []
        assert read_chunk_page(store, "a", describe_chunk, offset=3, sink=slices.append) == ChunkList(
            chunks=[], total=count
        )
        assert [len(s) for s in slices] == [SLICE, SLICE, count - 3 - 2 * SLICE]
        assert [c for s in slices for c in s] == whole.chunks and whole.total == count
        assert [c.index for c in whole.chunks] == list(range(3, count))
        limited: list[list[DescribeChunk]] = []
        read_chunk_page(store, "a", describe_chunk, limit=SLICE + 1, sink=limited.append)
        assert [c.index for s in limited for c in s] == list(range(SLICE + 1))
    finally:
        store.close()


def test_listing_the_chunks_of_a_local_job_does_not_read_its_resume_data(manager, tmp_path):
    """The resume data of a folder job lists every item (megabytes, 0.1 s to read for 20,000 files): every
    ``GET .../chunks`` read it, though only an object-store destination's URLs need it."""
    from jupyter_staging.engine.models import CreateJob

    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(300):
        (folder / f"f{i:03d}.txt").write_text(str(i))
    job, _ = manager.create(CreateJob(source=str(folder), destination="out"))
    manager.wait(job.id, timeout=120)
    assert manager.get(job.id).state.value == "succeeded"
    reads: list[bool] = []
    get_job = manager.store.get_job

    def recording_get_job(job_id: str, *, resume: bool = True):  # the real read, recorded
        reads.append(resume)
        return get_job(job_id, resume=resume)

    manager.store.get_job = recording_get_job  # type: ignore[method-assign]
    page = manager.chunk_page(job.id, offset=10, limit=5)
    assert [c.index for c in page.chunks] == [10, 11, 12, 13, 14] and page.total == 300
    assert len(manager.chunks(job.id)) == 300
    assert reads and not any(reads), reads
