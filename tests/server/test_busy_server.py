"""Job creation in a busy server (issue 12): while a job writes into a folder, and with thousands of
finished jobs in the job database, ``POST /jobs`` still answers what it should."""

from __future__ import annotations

import json
import os
import uuid
from datetime import timedelta

import pytest
from sqlalchemy import insert

from jupyter_staging.engine.store import JobRecord, ResumeRecord, utcnow
from tests.helpers.api import API, expect_error, post_job, wait_for
from tests.helpers.data import KEPLER, SPITZER

SEEDED = 3000


@pytest.fixture
def slow_file(range_server):
    """A 3 MiB file served at 1 MB/s: a job reading it stays running for about 3 s."""
    (range_server.root / "slow.bin").write_bytes(os.urandom(3 * 1024 * 1024))
    range_server.throttle_bytes_per_s = 1_000_000
    return range_server.url("slow.bin")


def seed_finished_jobs(manager, count: int) -> list[str]:
    """Insert ``count`` succeeded copy jobs of the server's root (outputs never written) straight into its
    job database, one minute apart; returns their destinations."""
    now = utcnow()
    rows = []
    for i in range(count):
        created = now - timedelta(minutes=count - i)
        item = {"name": f"kplr{i:09d}_llc.fits", "size": 100, "validator": {"size": 100, "mtime_ns": i}}
        rows.append(
            {
                **dict(id=str(uuid.uuid4()), owner=manager.default_owner, root=str(manager.root_dir)),
                **dict(name=f"seed-{i}", source=f"/archive/{item['name']}", destination=f"staging/seed-{i}"),
                **dict(method="copy", state="succeeded", bytes_done=100, bytes_total=100, rows_done=0),
                **dict(chunks_done=1, chunks_total=1, cleanup_policy="retain"),
                **dict(resume={"request": {"key": f"{i:064x}"}, "items": [item]}),
                **dict(created_at=created, updated_at=created, started_at=created, finished_at=created),
            }
        )
    resumes = [{"job_id": r["id"], "resume": r.pop("resume")} for r in rows]
    with manager.store.session() as s:
        s.execute(insert(JobRecord), rows)
        s.execute(insert(ResumeRecord), resumes)
    return [r["destination"] for r in rows]


async def test_requests_into_a_folder_a_job_is_writing(jp_fetch, slow_file):
    body = {"source": slow_file, "destination": "staging/slow"}
    first = await post_job(jp_fetch, body)
    job = json.loads(first.body)
    assert first.code == 201
    await wait_for(jp_fetch, job["id"], states=("running",))

    again = await post_job(jp_fetch, body)  # the same request: the running job answers it
    assert again.code == 200 and json.loads(again.body)["id"] == job["id"]
    await expect_error(
        post_job(jp_fetch, {"source": str(KEPLER), "destination": "staging/slow"}), 409, "destination_exists"
    )
    other = await post_job(jp_fetch, {"source": str(KEPLER), "destination": "staging/beside"})
    assert other.code == 201
    assert (await wait_for(jp_fetch, json.loads(other.body)["id"]))["state"] == "succeeded"

    await jp_fetch(*API, "jobs", job["id"], method="DELETE")
    assert (await wait_for(jp_fetch, job["id"]))["state"] == "cancelled"


async def test_creation_with_thousands_of_finished_jobs(jp_fetch, jp_serverapp, jp_root_dir):
    manager = jp_serverapp.web_app.settings["staging_manager"]
    destinations = seed_finished_jobs(manager, SEEDED)

    # A folder a finished job once wrote to, whose output is gone, takes a new job.
    reused = await post_job(jp_fetch, {"source": str(SPITZER), "destination": destinations[7]})
    assert reused.code == 201
    fresh = await post_job(jp_fetch, {"source": str(KEPLER), "destination": "staging/new"})
    assert fresh.code == 201
    for answer in (reused, fresh):
        assert (await wait_for(jp_fetch, json.loads(answer.body)["id"]))["state"] == "succeeded"
    assert (jp_root_dir / destinations[7] / SPITZER.name).is_file()

    page = json.loads((await jp_fetch(*API, "jobs", params={"limit": "5"})).body)
    assert [j["destination"] for j in page["jobs"][:2]] == ["staging/new", destinations[7]]
    assert len(page["jobs"]) == 5 and page["next_cursor"]
    listed = json.loads((await jp_fetch(*API, "jobs", params={"state": "succeeded", "limit": "1000"})).body)
    assert len(listed["jobs"]) == 1000
