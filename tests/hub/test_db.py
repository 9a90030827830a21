"""The operations table against SQLite and a real PostgreSQL (started by the tests)."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from sqlalchemy import inspect

from jupyter_staging.hub import db
from jupyter_staging.hub.db import Operation, OperationStore


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ops.sqlite'}"
    postgres = request.getfixturevalue("postgres")
    return postgres.create_database(f"ops_{uuid.uuid4().hex[:10]}")


def new_op(user: str, method: str = "local_copy", **fields) -> Operation:
    return Operation(id=str(uuid.uuid4()), user=user, actor=fields.pop("actor", user), method=method,
                     source="/archive/x.fits", **fields)  # fmt: skip


def test_rows_survive_a_new_store_and_filter(db_url, monkeypatch):
    store = OperationStore(db_url)
    assert "operations" in inspect(store.engine).get_table_names()
    t0 = db.utcnow()
    times = iter(t0 + timedelta(seconds=i) for i in range(100))
    monkeypatch.setattr(db, "utcnow", lambda: next(times))
    a = store.add(new_op("alice"))
    b = store.add(new_op("bob", "jupyter_copy", actor="admin"))
    c = store.add(new_op("alice", "hardlink"))
    store.finish(a.id, "succeeded", bytes=1457280, sha256="ab" * 32, target="/home/alice/staging/x.fits")
    store.update(b.id, job_id="job-1")
    store.finish(c.id, "failed", error_code="path_not_allowed", error_reason="no")
    store.close()

    again = OperationStore(db_url)  # a restarted service
    everything = again.list_operations()
    assert [o.id for o in everything] == [c.id, b.id, a.id]  # newest first
    done = again.get(a.id)
    assert done.status == "succeeded" and done.bytes == 1457280 and done.sha256 == "ab" * 32
    assert done.started.tzinfo is not None and done.finished > done.started
    assert again.get(b.id).job_id == "job-1" and again.get(b.id).status == "running"
    assert [o.id for o in again.list_operations(user="alice")] == [c.id, a.id]
    assert [o.id for o in again.list_operations(method="jupyter_copy")] == [b.id]
    assert [o.id for o in again.list_operations(status="failed")] == [c.id]
    assert again.list_operations(limit=1)[0].id == c.id
    record = again.get(c.id).to_dict()
    assert record["error_code"] == "path_not_allowed" and record["started"].endswith("Z")
    assert again.get("nope") is None and again.update("nope", status="failed") is None
    with pytest.raises(ValueError):
        again.finish(a.id, "running")
    again.close()


def test_a_lost_lease_carries_the_row_as_the_other_replica_left_it(db_url):
    """``finish`` by a replica whose lease another took raises :class:`LeaseLost` carrying the row as read
    (usable after the rollback: the outcome is dropped, not a ``DetachedInstanceError``)."""
    store = OperationStore(db_url)
    op = store.add(new_op("alice", runner="A", lease_expires_at=db.utcnow() - timedelta(seconds=1)))
    [taken] = store.claim_expired("B", db.utcnow() + timedelta(seconds=60), limit=5)
    assert taken.id == op.id and taken.runner == "B" and taken.started.tzinfo is not None
    with pytest.raises(db.LeaseLost) as lost:
        store.finish(op.id, "succeeded", runner="A")
    assert lost.value.operation.runner == "B" and lost.value.operation.status == "running"
    assert store.get(op.id).status == "running"
    store.close()
