"""Migration 0009: the indexes through which a page of ``GET /jobs`` and the destination lookups of
``POST /jobs`` stay fast with years of jobs in the database (jobs are never deleted), on SQLite, PostgreSQL
and MariaDB; a destination of the longest length allowed (4,096 characters) is still stored; a downgrade to
0008 drops them and an upgrade makes them again."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import sqlalchemy as sa

from jupyter_staging.engine.migrate import JOB_MIGRATIONS, current_revision
from jupyter_staging.engine.store import _ACTIVE_JOB_ID, JobRecord, Store
from tests.hub.test_migrations import downgrade_jobs

INDEXES = {"ix_staging_jobs_owner_created", "ix_staging_jobs_destination"}
NOW = datetime(2026, 12, 6, 12, 0, tzinfo=timezone.utc)


def job(job_id: str, destination: str, created: datetime) -> JobRecord:
    return JobRecord(
        id=job_id, owner="alice", root="/home/alice", name="k", source="/archive/k.fits",
        destination=destination, method="copy", state="succeeded", cleanup_policy="retain",
        created_at=created, updated_at=created,
    )  # fmt: skip


def indexes(engine: sa.Engine) -> set[str]:
    return {ix["name"] for ix in sa.inspect(engine).get_indexes("staging_jobs")}


def test_job_lookups_are_indexed_and_a_longest_destination_is_still_stored(db_url):
    store = Store(db_url)
    engine = sa.create_engine(db_url)
    try:
        assert INDEXES <= indexes(engine)
        longest = "staging/" + "d" * (4096 - len("staging/"))
        store.add_job(job("j-long", longest, NOW))
        store.add_job(job("j-short", "staging/kepler", NOW + timedelta(seconds=1)))
        assert store.active_job_id("/home/alice", longest, ["succeeded"]) == "j-long"
        assert [j.id for j in store.list_jobs("alice", resume=False)] == ["j-short", "j-long"]

        downgrade_jobs(engine, "0008")
        engine.dispose()
        assert not INDEXES & indexes(engine)
    finally:
        store.close()
    Store(db_url).close()
    assert INDEXES <= indexes(engine) and current_revision(engine, JOB_MIGRATIONS) == JOB_MIGRATIONS.head()
    engine.dispose()


def plan(conn: sa.Connection, statement: sa.Select) -> str:
    """SQLite's plan for ``statement`` (its values written in)."""
    sql = str(statement.compile(conn, compile_kwargs={"literal_binds": True}))
    return " ".join(row[3] for row in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}").fetchall())


def test_on_sqlite_neither_lookup_scans_or_sorts_the_jobs(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'jobs.sqlite'}")
    try:
        with store.engine.connect() as conn:
            active = _ACTIVE_JOB_ID.params(root="/home/alice", destination="staging/k", states=["queued"])
            found = plan(conn, active)
            assert "ix_staging_jobs_destination" in found, found
            page = (
                sa.select(JobRecord.id)
                .where(JobRecord.owner == "alice")
                .order_by(JobRecord.created_at.desc(), JobRecord.id.desc())
                .limit(100)
            )
            found = plan(conn, page)
            assert "ix_staging_jobs_owner_created" in found and "TEMP B-TREE" not in found, found
    finally:
        store.close()
