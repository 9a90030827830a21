"""A job's resume data lives in a table of its own (migration 0004): read for many jobs at once in batches
that stay below every database's limit of bound parameters, written with the job's row in one transaction."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from jupyter_staging.engine import resumerows
from jupyter_staging.engine.store import JobRecord, ResumeNotRead, Store

NOW = datetime(2026, 12, 2, 8, 0, tzinfo=timezone.utc)


def job(i: int, resume: dict | None) -> JobRecord:
    return JobRecord(
        id=f"job-{i:03d}", owner="alice", root="/home/alice", name=f"lc-{i}", source="/archive",
        destination=f"staging/lc-{i}", method="copy", state="succeeded", cleanup_policy="retain",
        resume=resume, created_at=NOW, updated_at=NOW,
    )  # fmt: skip


@pytest.fixture
def store(tmp_path):
    s = Store(f"sqlite:///{tmp_path / 'jobs.sqlite'}")
    yield s
    s.close()


def test_many_jobs_are_read_with_their_resume_data_in_batches(store, monkeypatch):
    monkeypatch.setattr(resumerows, "RESUME_BATCH", 3)  # 10 jobs: four SELECTs
    for i in range(10):
        store.add_job(job(i, {"items": [{"name": f"lc-{i}.fits"}]} if i % 4 else None))
    listed = store.list_jobs("alice", limit=100)
    assert len(listed) == 10
    for rec in listed:
        i = int(rec.id.split("-")[1])
        assert rec.resume == ({"items": [{"name": f"lc-{i}.fits"}]} if i % 4 else None)
    light = store.list_jobs("alice", limit=100, resume=False)
    with pytest.raises(ResumeNotRead):
        _ = light[0].resume


def test_resume_data_is_written_with_the_job_row(store):
    store.add_job(job(1, None))
    store.write_chunks(
        "job-001", [], {}, resume={"items": [], "part_bytes": {"p-0.parquet": 3}}, bytes_done=5
    )
    rec = store.get_job("job-001")
    assert rec is not None and rec.bytes_done == 5
    assert rec.resume == {"items": [], "part_bytes": {"p-0.parquet": 3}} and rec.part_bytes == {
        "p-0.parquet": 3
    }
    updated = store.update_job("job-001", resume={"items": [{"name": "a"}]}, state="failed")
    assert updated is not None and updated.part_bytes is None
    again = store.get_job("job-001")
    assert again is not None and again.state == "failed" and again.resume == {"items": [{"name": "a"}]}


def test_jobs_are_read_with_their_resume_data_and_changes_under_sqlites_old_limit_of_999_parameters(store):
    """An SQLite before 3.32 binds at most 999 parameters per statement; each read names a batch of job ids
    twice (their whole rows and their rows of changes), so 850 jobs take three reads, none refused."""
    import sqlite3

    from sqlalchemy import event

    from jupyter_staging.engine.resumechanges import add

    @event.listens_for(store.engine, "connect")
    def old_limit(dbapi_conn, record):
        dbapi_conn.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 999)

    store.engine.dispose()  # new connections, with the limit
    for i in range(850):
        store.add_job(job(i, {"items": [{"name": f"lc-{i}.fits"}]}))
    store.write_chunks("job-007", [], {}, resume_changes=[add("converted", "lc-7.fits")])
    listed = {rec.id: rec for rec in store.list_jobs("alice", limit=1000)}
    assert len(listed) == 850
    assert listed["job-007"].resume == {"items": [{"name": "lc-7.fits"}], "converted": ["lc-7.fits"]}
