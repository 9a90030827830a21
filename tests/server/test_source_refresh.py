"""POST /jobs with a presigned URL signed again for a job that failed ``source_expired`` (its URL expired
while it was paused): the answer used to be a new job starting from byte 0; now it is the job itself (200,
``source_refreshed: true``), queued again, continuing from the bytes it kept, with no signature in any
answer or log line. Real Jupyter server (pytest-jupyter) and a Range HTTP server refusing expired URLs."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os

from tests.engine.test_source_refresh import NEW, OLD, signed
from tests.helpers.api import API, post_job, wait_for
from tests.helpers.leaks import assert_nowhere


async def test_a_job_failed_source_expired_continues_when_posted_with_a_new_url(
    jp_fetch, jp_root_dir, range_server
):
    payload = os.urandom(1_500_000)
    (range_server.root / "k.bin").write_bytes(payload)
    range_server.check_expiry = True
    range_server.throttle_bytes_per_s = 300_000
    bodies: list[str] = []

    async def call(*path, **kwargs) -> dict:
        response = await jp_fetch(*API, *path, **kwargs)
        bodies.append(response.body.decode())
        return json.loads(response.body)

    old = {"source": signed(range_server.url("k.bin"), OLD, lifetime=2), "destination": "staging/k"}
    response = await post_job(jp_fetch, old)
    job = json.loads(response.body)
    assert response.code == 201
    while (await call("jobs", job["id"]))["progress"]["bytes_done"] < 150_000:
        await asyncio.sleep(0.05)
    assert (await call("jobs", job["id"], "pause", method="POST", body=""))["state"] == "paused"
    await asyncio.sleep(3.5)
    await call("jobs", job["id"], "resume", method="POST", body="")
    failed = await wait_for(jp_fetch, job["id"])
    assert failed["error"]["code"] == "source_expired"
    assert "presign it again" in failed["error"]["message"]
    kept = (jp_root_dir / "staging" / "k" / "k.bin.part").stat().st_size
    assert kept > 0

    range_server.throttle_bytes_per_s = 0
    new = {"source": signed(range_server.url("k.bin"), NEW, lifetime=600), "destination": "staging/k"}
    response = await post_job(jp_fetch, new)
    again = json.loads(response.body)
    bodies.append(response.body.decode())
    assert response.code == 200
    assert (again["id"], again["source_refreshed"], again["error"]) == (job["id"], True, None)
    done = await wait_for(jp_fetch, job["id"])
    assert done["state"] == "succeeded", done
    staged = (jp_root_dir / "staging" / "k" / "k.bin").read_bytes()
    assert hashlib.sha256(staged).hexdigest() == hashlib.sha256(payload).hexdigest()
    resumed_at = [
        r.headers.get("Range") for r in range_server.requests if NEW in r.path and r.method == "GET"
    ]
    assert f"bytes={kept}-" in resumed_at
    log = (await jp_fetch(*API, "jobs", job["id"], "log")).body.decode()
    assert "queued again" in log
    assert_nowhere([OLD, NEW], [*bodies, log], "the API's answers")
