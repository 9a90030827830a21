"""The quota's count of staged output (``SpaceLimits.staged_bytes``), summed by the database on SQLite,
PostgreSQL and MariaDB (issue 12: every ``POST /jobs`` asks it when ``StagingApp.quota_bytes`` is set, and
loading each finished job's chunk records made that 2.5 s with 10,000 jobs in the database).

What counts: the announced total (else the bytes done) of a queued, running or paused job; the ``ready``
chunks of a succeeded or failed job, and its ``acked`` ones unless they are deleted on ack. Not counted:
another root's jobs, a destination in an object store, a cancelled job's chunks, chunks ``pending`` or
``expired``.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import sqlalchemy as sa

from jupyter_staging.engine.space import SpaceLimits
from jupyter_staging.engine.store import ChunkRecord, JobRecord, Store

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=timezone.utc)
ROOT = "/home/alice"
TIB = 2**40


def add(store: Store, job_id: str, state: str, chunks: dict[str, int | None] | None = None, **fields) -> None:
    """Job ``job_id`` of ``ROOT`` (unless ``fields`` say otherwise) in ``state`` with one chunk per
    ``{chunk state: bytes}`` of ``chunks``."""
    created = NOW + timedelta(seconds=len(job_id))
    values = dict(
        id=job_id, owner="alice", root=ROOT, name=job_id, source="/archive/k.fits",
        destination=f"staging/{job_id}", method="copy", state=state, cleanup_policy="retain",
        created_at=created, updated_at=created,
    )  # fmt: skip
    store.add_job(JobRecord(**{**values, **fields}))
    rows = [
        dict(id=f"{job_id}-{i}", job_id=job_id, index=i, path=f"f{i}", state=chunk_state, bytes=size)
        for i, (chunk_state, size) in enumerate((chunks or {}).items())
    ]
    if rows:
        with store.session() as s:
            s.execute(sa.insert(ChunkRecord), rows)


def test_staged_bytes_counts_what_the_root_holds_locally(db_url):
    store = Store(db_url)
    try:
        limits = SpaceLimits(store, Path(ROOT), quota_bytes=1)
        assert limits.staged_bytes() == 0  # no job: SUM over no row is NULL
        add(store, "queued", "queued", bytes_total=100, bytes_done=1)
        add(store, "running", "running", bytes_done=7)
        add(store, "paused", "paused")
        add(store, "kept", "succeeded", {"ready": 1000, "acked": 2000, "expired": 4000, "pending": 8000})
        add(store, "on-ack", "failed", {"ready": 10_000, "acked": 20_000}, cleanup_policy="delete_on_ack")
        add(store, "huge", "succeeded", {"ready": 5 * TIB, "acked": None})
        add(store, "cancelled", "cancelled", {"ready": 40_000})
        add(store, "in-s3", "succeeded", {"ready": 80_000}, destination="s3://bucket/prefix/")
        add(store, "to-s3", "queued", destination="s3://bucket/other/", bytes_total=160_000)
        add(store, "bob-kept", "succeeded", {"ready": 320_000}, root="/home/bob")
        add(store, "bob-queued", "queued", root="/home/bob", bytes_total=640_000)
        assert limits.staged_bytes() == 100 + 7 + 1000 + 2000 + 10_000 + 5 * TIB
        assert SpaceLimits(store, Path("/home/bob"), quota_bytes=1).staged_bytes() == 320_000 + 640_000
    finally:
        store.close()


def test_a_job_finishing_during_the_count_is_counted_once(db_url):
    """A job that succeeds while the quota is counted (another process's runner, between the count's reads)
    is counted as writing or as kept, never both: POST /jobs near the quota was refused for bytes counted
    twice when the two sums were two statements (PostgreSQL's READ COMMITTED gives each its own snapshot)."""
    store = Store(db_url)
    try:
        limits = SpaceLimits(store, Path(ROOT), quota_bytes=1)
        add(store, "finishing", "running", {"ready": 1000}, bytes_total=1000)
        add(store, "kept", "succeeded", {"ready": 10})
        assert limits.staged_bytes() == 1000 + 10
        other = sa.create_engine(db_url)
        reads: list[str] = []

        def finish(conn, cursor, statement, parameters, context, executemany) -> None:
            # the job ends between the count's reads, committed by another connection
            counting = "sum(" in statement or "total(" in statement  # TOTAL on SQLite
            if statement.lstrip().upper().startswith("SELECT") and counting:
                reads.append(statement)
                if len(reads) == 1:
                    done = sa.update(JobRecord).values(state="succeeded").where(JobRecord.id == "finishing")
                    with other.begin() as c:
                        c.execute(done)

        sa.event.listen(store.engine, "after_cursor_execute", finish)
        try:
            assert limits.staged_bytes() == 1000 + 10
        finally:
            sa.event.remove(store.engine, "after_cursor_execute", finish)
            other.dispose()
        assert reads
    finally:
        store.close()


def test_announced_sizes_beyond_a_64_bit_sum_are_counted(db_url):
    """Two running jobs announcing 5 EB each (sizes a remote server claimed, admitted before a quota was
    set): SQLite's SUM stops with ``integer overflow`` past 2**63 - 1, which made every POST /jobs of the
    root a 503 ``database_unavailable`` (the count in Python before had no limit). The count is now ``10
    EB``: over any quota, so the next job is refused for its size, as it should be."""
    store = Store(db_url)
    try:
        add(store, "big-1", "running", bytes_total=5 * 10**18)
        add(store, "big-2", "running", bytes_total=5 * 10**18)
        add(store, "small", "queued", bytes_total=12_345)
        assert SpaceLimits(store, Path(ROOT), quota_bytes=1).staged_bytes() >= 10 * 10**18
    finally:
        store.close()
