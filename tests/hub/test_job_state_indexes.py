"""Migration 0012: the jobs of an owner in one state (``GET /jobs?state=...``, the opening of ``GET
/events``) are read through the ``(owner, state, created_at, id)`` index, on SQLite, PostgreSQL and MariaDB,
whatever the number of finished jobs (issue 12); the TTL sweep's answer is unchanged; a downgrade to 0011
drops the index (the answers stay the same) and an upgrade makes it again."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import sqlalchemy as sa
from sqlalchemy.dialects import sqlite

from jupyter_staging.engine.migrate import JOB_MIGRATIONS, current_revision
from jupyter_staging.engine.store import JobRecord, Store
from tests.hub.test_migrations import downgrade_jobs

INDEXES = {"ix_staging_jobs_owner_state"}
NOW = datetime(2026, 12, 6, 12, 0, tzinfo=timezone.utc)
FINAL = ["succeeded", "failed", "cancelled"]


def add(store: Store, job_id: str, state: str, minutes: int, expires: int | None = None) -> None:
    """Job ``job_id`` of alice in ``state``, created ``minutes`` after NOW, expiring ``expires`` minutes
    after NOW (None: never)."""
    created = NOW + timedelta(minutes=minutes)
    store.add_job(
        JobRecord(
            id=job_id, owner="alice", root="/home/alice", name="k", source="/archive/k.fits",
            destination=f"staging/{job_id}", method="copy", state=state, cleanup_policy="retain",
            created_at=created, updated_at=created,
            expires_at=None if expires is None else NOW + timedelta(minutes=expires),
        )
    )  # fmt: skip


def indexes(engine: sa.Engine) -> set[str]:
    return {ix["name"] for ix in sa.inspect(engine).get_indexes("staging_jobs")}


def answers(store: Store) -> tuple[list[str], ...]:
    def ids(**kwargs) -> list[str]:
        return [j.id for j in store.list_jobs(root="/home/alice", resume=False, **kwargs)]

    return (
        ids(owner="alice", states=["paused"]),
        ids(owner="alice", states=["running"], limit=1),
        ids(states=FINAL, limit=100000, expires_before=NOW + timedelta(minutes=30)),
    )


def plan(engine: sa.Engine, query: sa.Select) -> str:
    sql = str(query.compile(dialect=sqlite.dialect(), compile_kwargs={"literal_binds": True}))
    with engine.connect() as conn:
        return " ".join(str(row[-1]) for row in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql))


def test_state_pages_are_indexed(db_url):
    store = Store(db_url)
    engine = sa.create_engine(db_url)
    try:
        assert INDEXES <= indexes(engine)
        for i in range(40):
            add(store, f"done-{i:02d}", "succeeded", i, expires=None if i % 2 else 60)
        add(store, "old-paused", "paused", -10_000)
        add(store, "running-1", "running", 50)
        add(store, "running-2", "running", 51)
        add(store, "due-1", "failed", 5, expires=10)
        add(store, "due-2", "cancelled", 6, expires=30)
        expected = (["old-paused"], ["running-2"], ["due-2", "due-1"])
        assert answers(store) == expected
        if engine.dialect.name == "sqlite":
            jobs = JobRecord
            page = (
                sa.select(jobs)
                .where(jobs.owner == "alice", jobs.root == "/r", jobs.state == "paused")
                .order_by(jobs.created_at.desc(), jobs.id.desc())
                .limit(101)
            )
            assert "ix_staging_jobs_owner_state" in plan(engine, page)

        downgrade_jobs(engine, "0011")
        engine.dispose()
        assert not INDEXES & indexes(engine)
        assert answers(store) == expected
    finally:
        store.close()
    Store(db_url).close()
    assert INDEXES <= indexes(engine) and current_revision(engine, JOB_MIGRATIONS) == JOB_MIGRATIONS.head()
    engine.dispose()
