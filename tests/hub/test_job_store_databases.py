"""The job store's chunk writes on each database a site may give it (SQLite, PostgreSQL, MariaDB): chunk
rows are inserted and updated by one driver-level ``executemany`` per set of columns, the statement compiled
for the database (positional or named parameters), and read back as written."""

from __future__ import annotations

import pytest

from jupyter_staging.engine.store import JobRecord, Store, utcnow


@pytest.fixture(params=["sqlite", "postgresql", "mariadb"])
def db_url(request, tmp_path) -> str:
    """An empty database of each kind (the servers are started once per session)."""
    name = f"chunks_{abs(hash(request.node.name)) % 10**8}"
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'jobs.sqlite'}"
    if request.param == "postgresql":
        return request.getfixturevalue("postgres").create_database(name)
    return request.getfixturevalue("mariadb").create_database(name)


def test_chunk_rows_are_inserted_and_updated_in_batches_on_each_database(db_url: str):
    store = Store(db_url)
    try:
        now = utcnow()
        rec = JobRecord(
            **dict(id="j-1", owner="me", root="/r", name="n", source="/s", destination="d", method="copy"),
            **dict(state="running", cleanup_policy="retain", created_at=now, updated_at=now, resume={}),
        )
        store.add_job(rec)
        pending = [
            {
                "id": f"c-{i}",
                "job_id": "j-1",
                "index": i,
                "path": f"lc-{i:05d}.fits",
                "state": "pending",
                "bytes": 65536 + i,
                "content_type": None,
            }
            for i in range(300)
        ]
        # Two sets of columns: one executemany each.
        pending += [
            {"id": "c-300", "job_id": "j-1", "index": 300, "path": "100% done's.fits", "state": "pending"}
        ]
        store.write_chunks("j-1", new=pending, updates={}, chunks_done=0)
        updates = {
            f"c-{i}": {"state": "ready", "sha256": f"{i:064x}", "bytes": 65536 + i} for i in range(0, 300, 2)
        }
        updates["c-1"] = {"state": "ready", "sha256": None, "bytes": 1}  # another set of values, same columns
        updates["c-300"] = {"state": "ready", "path": "100% done's.fits", "rows": 7}
        store.write_chunks("j-1", new=[], updates=updates, chunks_done=len(updates))
        chunks = {c.id: c for c in store.list_chunks("j-1")}
    finally:
        store.close()
    assert len(chunks) == 301
    assert [c.index for c in sorted(chunks.values(), key=lambda c: c.index)] == list(range(301))
    for i in range(300):
        c = chunks[f"c-{i}"]
        if i % 2 == 0:
            assert (c.state, c.sha256, c.bytes, c.path) == (
                "ready",
                f"{i:064x}",
                65536 + i,
                f"lc-{i:05d}.fits",
            )
        elif i == 1:
            assert (c.state, c.sha256, c.bytes) == ("ready", None, 1)
        else:
            assert (c.state, c.sha256, c.bytes) == ("pending", None, 65536 + i)
    last = chunks["c-300"]
    assert (last.state, last.path, last.rows, last.bytes) == ("ready", "100% done's.fits", 7, None)
