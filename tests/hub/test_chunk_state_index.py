"""Migration 0011: whether a job has a chunk in some state (asked at every ack of a ``delete_on_ack`` job,
:func:`~jupyter_staging.engine.acks.chunk_states_present`) is answered through the ``(job_id, state)`` index
on SQLite, PostgreSQL and MariaDB; a downgrade to 0010 drops the index (the answer stays the same) and an
upgrade makes it again."""

from __future__ import annotations

from datetime import datetime, timezone

import sqlalchemy as sa

from jupyter_staging.engine.acks import chunk_states_present
from jupyter_staging.engine.migrate import JOB_MIGRATIONS, current_revision
from jupyter_staging.engine.store import JobRecord, Store
from tests.hub.test_migrations import downgrade_jobs

INDEX = "ix_staging_chunks_job_state"
NOW = datetime(2026, 12, 6, 12, 0, tzinfo=timezone.utc)


def job_record(job_id: str) -> JobRecord:
    return JobRecord(
        id=job_id, owner="alice", root="/home/alice", name="k", source="/archive", destination=job_id,
        method="copy", state="succeeded", cleanup_policy="delete_on_ack", created_at=NOW, updated_at=NOW,
    )  # fmt: skip


def chunk_rows(job_id: str, states: dict[str, int]) -> list[dict]:
    """``{state: how many}`` chunk rows of job ``job_id``, indexes in the order given."""
    listed = [state for state, count in states.items() for _ in range(count)]
    return [
        {"id": f"{job_id}-{i}", "job_id": job_id, "index": i, "path": f"f{i}", "state": state}
        for i, state in enumerate(listed)
    ]


def indexes(engine: sa.Engine) -> set[str]:
    return {ix["name"] for ix in sa.inspect(engine).get_indexes("staging_chunks")}


def test_chunk_states_are_found_by_the_index_and_the_migration_goes_both_ways(db_url):
    store = Store(db_url)
    engine = sa.create_engine(db_url)
    try:
        assert INDEX in indexes(engine)
        store.add_job(job_record("a"))
        store.add_job(job_record("b"))
        store.write_chunks("a", chunk_rows("a", {"acked": 500, "ready": 1}), {})
        store.write_chunks("b", chunk_rows("b", {"pending": 2, "expired": 1}), {})
        every = ("pending", "ready", "acked", "expired")
        assert chunk_states_present(store, "a", every) == {"acked", "ready"}
        assert chunk_states_present(store, "b", every) == {"pending", "expired"}
        assert chunk_states_present(store, "b", ["ready", "ready"]) == set()
        assert chunk_states_present(store, "none", every) == set()
        assert chunk_states_present(store, "a", []) == set()
        if engine.dialect.name == "sqlite":
            with engine.connect() as conn:
                plan = conn.exec_driver_sql(
                    "EXPLAIN QUERY PLAN SELECT EXISTS (SELECT * FROM staging_chunks "
                    "WHERE job_id = 'a' AND state = 'ready')"
                ).all()
            assert INDEX in " ".join(str(row[-1]) for row in plan), plan

        downgrade_jobs(engine, "0010")
        engine.dispose()
        assert INDEX not in indexes(engine)
        assert chunk_states_present(store, "a", every) == {"acked", "ready"}  # the same answer, slower
    finally:
        store.close()
    Store(db_url).close()
    assert INDEX in indexes(engine) and current_revision(engine, JOB_MIGRATIONS) == JOB_MIGRATIONS.head()
    engine.dispose()
