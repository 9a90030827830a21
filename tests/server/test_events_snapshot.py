"""The opening of ``GET /events`` with years of jobs in the database (issue 12): every unfinished job of the
owner, however old, and no finished one read for it.

It read the newest 1,000 jobs of any state and kept the unfinished ones: a job paused before the newest
1,000 (a user with years of finished jobs) was left out, so a panel connecting never showed it, and every
connection read and described 1,000 finished jobs (74 ms with 10,000 in the database). Now only queued,
running and paused jobs are read (:func:`~jupyter_staging.engine.snapshot.unfinished_jobs`, through the
``(owner, state, created_at, id)`` index of migration 0012). What is read is counted, never timed.
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import event, insert

from jupyter_staging.engine.snapshot import unfinished_jobs
from jupyter_staging.engine.store import JobRecord, utcnow
from tests.helpers.api import EventStream
from tests.server.test_busy_server import seed_finished_jobs

FINISHED = 1100


def add_unfinished(manager, job_id: str, state: str, age: timedelta) -> None:
    """Job ``job_id`` of the server's owner and root in ``state``, created ``age`` ago."""
    created = utcnow() - age
    row = dict(
        id=job_id, owner=manager.default_owner, root=str(manager.root_dir), name=job_id, method="copy",
        source=f"/archive/{job_id}.fits", destination=f"staging/{job_id}", state=state, bytes_done=0,
        bytes_total=100, rows_done=0, chunks_done=0, chunks_total=1, cleanup_policy="retain",
        created_at=created, updated_at=created,
    )  # fmt: skip
    with manager.store.session() as s:
        s.execute(insert(JobRecord), [row])


def seed(manager) -> None:
    """An old paused job, then ``FINISHED`` finished jobs (the newest of them a minute old), then a queued
    job of another owner and one of the owner's own in another root, neither of which is shown."""
    add_unfinished(manager, "old-paused", "paused", timedelta(days=3650))
    seed_finished_jobs(manager, FINISHED)
    add_unfinished(manager, "recent-paused", "paused", timedelta(seconds=5))
    with manager.store.session() as s:
        s.execute(
            JobRecord.__table__.update().where(JobRecord.id == "recent-paused").values(owner="someone-else")
        )


async def test_the_stream_opens_with_an_old_paused_job(
    jp_serverapp, http_server_client, jp_base_url, jp_auth_header
):
    manager = jp_serverapp.web_app.settings["staging_manager"]
    seed(manager)
    stream = EventStream(http_server_client, jp_base_url, jp_auth_header, timeout=2)
    await stream.closed()
    opened = [e["job"]["id"] for e in stream.events]
    assert opened == ["old-paused"], opened


async def test_the_snapshot_reads_only_unfinished_jobs(jp_serverapp):
    manager = jp_serverapp.web_app.settings["staging_manager"]
    seed(manager)
    add_unfinished(manager, "queued-now", "queued", timedelta(seconds=1))
    add_unfinished(manager, "running-gone", "running", timedelta(days=400))
    loaded: list[str] = []

    def seen(target, _context) -> None:
        loaded.append(target.id)

    event.listen(JobRecord, "load", seen)
    try:
        jobs = unfinished_jobs(manager, manager.default_owner)
    finally:
        event.remove(JobRecord, "load", seen)
    assert [j.id for j in jobs] == ["queued-now", "running-gone", "old-paused"]  # newest first
    assert [j.state.value for j in jobs] == ["queued", "running", "paused"]
    assert sorted(loaded) == ["old-paused", "queued-now", "running-gone"]  # no finished job read
